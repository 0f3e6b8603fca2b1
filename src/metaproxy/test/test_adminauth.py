# -*- test-case-name: metaproxy.test.test_adminauth -*-
"""
Tests for the admin listener's basic auth (L{metaproxy.ops.adminauth}) and
TLS (L{metaproxy.ops.admintls}): the checker with fakes, the guarded
resource tree with L{DummyRequest}, the config's checks, and one real
C{twistd metaproxy} serving its admin listener over TLS with a throw-away
certificate.
"""

import base64
import http.client
import os
import socket
import ssl
import time

import bcrypt
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from metaproxy.config import ConfigError, parse_config
from metaproxy.ops.admin import build_admin_root, build_admin_site
from metaproxy.ops.adminauth import BasicAuthChecker, GuardedRoot, TooBusy, guard_root
from metaproxy.ops.admintls import split_tls
from metaproxy.test.test_admin import _Routes
from metaproxy.testing.commandline import start_metaproxy
from metaproxy.testing.net import free_port
from metaproxy.testing.tlscert import self_signed

HASH = "$2b$04$" + "a" * 53  # well-formed; the fake check below decides


def basic(user, password):
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class _FakeCheck:
    """A bcrypt stand-in: the password is right when it equals C{right}; records each call."""

    def __init__(self, right=b"s3cret"):
        self.right = right
        self.calls = []

    def __call__(self, password, hashed):
        self.calls.append((password, hashed))
        return password == self.right


def _now(f, *args):
    return defer.maybeDeferred(f, *args)


class CheckerTests(SynchronousTestCase):
    def setUp(self):
        self.check = _FakeCheck()
        self.checker = BasicAuthChecker({"prom": HASH}, None, check=self.check, run=_now)

    def test_right_credential_is_checked_once_then_remembered(self):
        """The right credential gives the user; the next request with it costs no bcrypt check."""
        self.assertEqual(self.successResultOf(self.checker.authorize(basic("prom", "s3cret"))), "prom")
        self.assertEqual(self.successResultOf(self.checker.authorize(basic("prom", "s3cret"))), "prom")
        self.assertEqual((len(self.check.calls), self.checker.checks), (1, 1))
        self.assertEqual(self.checker.failures, {"wrong": 0, "malformed": 0, "busy": 0})

    def test_wrong_password_is_counted_and_not_remembered(self):
        """A wrong password gives L{None}, is counted as wrong, and is checked again next time."""
        for _ in range(2):
            self.assertIsNone(self.successResultOf(self.checker.authorize(basic("prom", "guess"))))
        self.assertEqual((self.checker.checks, self.checker.failures["wrong"]), (2, 2))

    def test_unknown_user_costs_a_check_too(self):
        """An unknown user is refused after a check against a real hash, so timing does not tell users apart."""
        self.assertIsNone(self.successResultOf(self.checker.authorize(basic("nobody", "s3cret"))))
        self.assertEqual(self.check.calls, [(b"s3cret", HASH.encode())])
        self.assertEqual(self.checker.failures["wrong"], 1)

    def test_malformed_headers(self):
        """Headers that are not basic auth are refused without a check and counted as malformed."""
        for header in (b"Bearer abc", b"Basic !!!notbase64", b"Basic " + base64.b64encode(b"nocolon"),
                       b"Basic " + b"A" * 2000):
            self.assertIsNone(self.successResultOf(self.checker.authorize(header)))
        self.assertEqual((self.checker.checks, self.checker.failures["malformed"]), (0, 4))

    def test_missing_header_is_no_attempt(self):
        """A request without a credential is refused but not counted as a failed attempt."""
        self.assertIsNone(self.successResultOf(self.checker.authorize(None)))
        self.assertEqual(sum(self.checker.failures.values()), 0)

    def test_checks_are_bounded(self):
        """
        At most max_checking checks run and max_waiting wait; one more is
        refused at once with L{TooBusy}; the waiting one runs once a slot frees.
        """
        running = []

        def held(f, *args):
            d = defer.Deferred()
            running.append((d, f(*args)))
            return d

        checker = BasicAuthChecker({"prom": HASH}, None, max_checking=1, max_waiting=1, check=self.check, run=held)
        first = checker.authorize(basic("prom", "s3cret"))
        second = checker.authorize(basic("prom", "x"))
        self.failureResultOf(checker.authorize(basic("prom", "y")), TooBusy)
        self.assertEqual((len(running), checker.failures["busy"]), (1, 1))
        d, result = running[0]
        d.callback(result)
        self.assertEqual(self.successResultOf(first), "prom")
        self.assertEqual(len(running), 2)
        running[1][0].callback(running[1][1])
        self.assertIsNone(self.successResultOf(second))

    def test_real_bcrypt(self):
        """With the real bcrypt: the right password passes, a wrong one and one over 72 bytes do not."""
        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
        checker = BasicAuthChecker({"prom": hashed}, None, run=_now)
        self.assertEqual(self.successResultOf(checker.authorize(basic("prom", "pw"))), "prom")
        self.assertIsNone(self.successResultOf(checker.authorize(basic("prom", "pw2"))))
        self.assertIsNone(self.successResultOf(checker.authorize(basic("prom", "p" * 100))))


def _get(root, path, header=None):
    """@return: C{(code, body, request)} of a GET through C{root}."""
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    if header is not None:
        request.requestHeaders.addRawHeader(b"authorization", header)
    request.render(getChildForRequest(root, request))
    return request.responseCode or 200, b"".join(request.written), request


class GuardedRootTests(SynchronousTestCase):
    def setUp(self):
        self.inner = build_admin_root(_Routes(), lambda: True)
        metrics = Resource()
        metrics.render_GET = lambda request: b"metaproxy_up 1\n"
        metrics.isLeaf = True
        self.inner.putChild(b"metrics", metrics)
        self.checker = BasicAuthChecker({"prom": HASH}, None, check=_FakeCheck(), run=_now)
        self.root = GuardedRoot(self.inner, self.checker, ("/healthz", "/readyz"))

    def test_probes_stay_open(self):
        """/healthz and /readyz answer without a credential."""
        self.assertEqual(_get(self.root, b"/healthz")[:2], (200, b"ok\n"))
        self.assertEqual(_get(self.root, b"/readyz")[0], 200)

    def test_protected_paths_ask_for_basic_auth(self):
        """/routes, /metrics and / answer 401 with a Basic challenge, without a credential or with a wrong one."""
        for path in (b"/routes", b"/metrics", b"/"):
            for header in (None, basic("prom", "wrong")):
                code, body, request = _get(self.root, path, header)
                self.assertEqual(code, 401, path)
                self.assertIn(b"Basic realm=", request.responseHeaders.getRawHeaders(b"www-authenticate")[0])
                self.assertNotIn(b"temp", body)
        self.assertEqual(self.checker.failures["wrong"], 3)

    def test_right_credential_serves(self):
        """With the right credential, /routes and /metrics are served as without the guard."""
        code, body, _ = _get(self.root, b"/routes", basic("prom", "s3cret"))
        self.assertEqual(code, 200)
        self.assertIn(b'"temp"', body)
        self.assertEqual(_get(self.root, b"/metrics", basic("prom", "s3cret"))[:2], (200, b"metaproxy_up 1\n"))

    def test_busy_answers_503(self):
        """When too many checks wait, a request gets 503 at once."""
        checker = BasicAuthChecker({"prom": HASH}, None, max_checking=1, max_waiting=0, check=_FakeCheck(),
                                   run=lambda f, *a: defer.Deferred())
        root = GuardedRoot(self.inner, checker, ())
        _get(root, b"/routes", basic("prom", "a"))
        self.assertEqual(_get(root, b"/routes", basic("prom", "b"))[0], 503)

    def test_no_users_no_guard(self):
        """Without basic_auth_users the admin root is served as it is."""
        config = parse_config("routes: {t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}}\n")
        self.assertEqual(guard_root(self.inner, config.admin, None), (self.inner, None))


class ConfigTests(SynchronousTestCase):
    def parse(self, admin):
        return parse_config(f"routes: {{t: {{cluster_name: c, meta_addrs: '127.0.0.1:1'}}}}\nadmin:\n{admin}",
                            "m.yaml")

    def test_users_and_open_paths(self):
        """basic_auth_users and open_paths load; open_paths defaults to the probes."""
        config = self.parse(f"  basic_auth_users: {{prom: '{HASH}'}}\n")
        self.assertEqual(dict(config.admin.basic_auth_users), {"prom": HASH})
        self.assertEqual(config.admin.open_paths, ("/healthz", "/readyz"))

    def test_bad_hash_and_path_are_located(self):
        """A value that is no bcrypt hash and an unknown open path are located errors."""
        with self.assertRaises(ConfigError) as e:
            self.parse("  basic_auth_users: {prom: plaintext}\n  open_paths: [/healthz, /secret]\n")
        text = str(e.exception)
        self.assertIn("m.yaml:4:", text)
        self.assertIn("expected a bcrypt hash", text)
        self.assertIn("'/secret': expected one of", text)
        self.assertNotIn("plaintext", text)

    def test_tls_with_missing_certificate_is_located(self):
        """An ssl: admin.listen naming a missing certificate is a located error."""
        with self.assertRaises(ConfigError) as e:
            self.parse("  listen: 'ssl:0:interface=127.0.0.1:certKey=/nonexistent.pem:privateKey=/nonexistent.key'\n")
        self.assertIn("m.yaml:3:11: not a valid Twisted endpoint", str(e.exception))

    def test_split_tls(self):
        """An ssl: endpoint becomes a tcp: one on the same port and interface plus a context factory."""
        cert, key = self_signed(self._dir())
        tcp, context = split_tls(f"ssl:24602:interface=127.0.0.1:certKey={cert}:privateKey={key}")
        self.assertEqual(tcp, "tcp:24602:backlog=50:interface=127.0.0.1")
        self.assertIsNotNone(context.getContext())
        self.assertEqual(split_tls("tcp:1:interface=::1"), ("tcp:1:interface=::1", None))

    def _dir(self):
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path


class TlsProcessTests(SynchronousTestCase):
    def test_admin_over_tls_with_basic_auth(self):
        """
        A real metaproxy with an ssl: admin.listen and basic_auth_users:
        the probes answer over TLS without a credential, /routes and
        /metrics need it, failed attempts show in
        metaproxy_admin_auth_failures_total, and plain HTTP gets no answer.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        cert, key = self_signed(workdir)
        hashed = bcrypt.hashpw(b"scrape-pw", bcrypt.gensalt(4)).decode()
        port, admin_port = free_port(), free_port()
        config = os.path.join(workdir, "metaproxy.yaml")
        with open(config, "w") as f:
            f.write(
                f"listen: tcp:{port}:interface=127.0.0.1\n"
                "routes: {temp: {cluster_name: c1, meta_addrs: '127.0.0.1:1'}}\n"
                f"admin:\n  listen: 'ssl:{admin_port}:interface=127.0.0.1:certKey={cert}:privateKey={key}'\n"
                f"  basic_auth_users: {{prom: '{hashed}'}}\n"
            )
        proxy = start_metaproxy(workdir, config, port)
        self.addCleanup(proxy.stop)
        context = ssl.create_default_context(cafile=cert)

        def get(path, header=None):
            conn = http.client.HTTPSConnection("127.0.0.1", admin_port, context=context, timeout=10)
            try:
                conn.request("GET", path, headers={"Authorization": header.decode()} if header else {})
                response = conn.getresponse()
                return response.status, response.read().decode(), response.getheader("www-authenticate")
            finally:
                conn.close()

        deadline = time.monotonic() + 20
        while True:
            try:
                health = get("/healthz")
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.1)
        self.assertEqual(health[:2], (200, "ok\n"))
        self.assertEqual(get("/readyz")[0], 200)
        status, _, challenge = get("/routes")
        self.assertEqual(status, 401)
        self.assertIn("Basic", challenge)
        self.assertEqual(get("/routes", basic("prom", "wrong"))[0], 401)
        status, body, _ = get("/routes", basic("prom", "scrape-pw"))
        self.assertEqual(status, 200)
        self.assertIn('"temp"', body)
        status, body, _ = get("/metrics", basic("prom", "scrape-pw"))
        self.assertEqual(status, 200)
        self.assertIn('metaproxy_admin_auth_failures_total{reason="wrong"} 1.0', body)
        plain = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
        self.addCleanup(plain.close)
        with self.assertRaises((http.client.HTTPException, OSError)):
            plain.request("GET", "/healthz")
            plain.getresponse()
        self.assertNotIn("scrape-pw", proxy.output())


class TlsFactoryTests(TestCase):
    """The TLS admin factory on a real loopback socket, in this process."""

    def serve(self, idle_timeout=30.0):
        """Adopt a listening socket with the TLS admin site, as a hot upgrade's new process does."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        self.cert, key = self_signed(workdir)
        tcp, context = split_tls(f"ssl:0:interface=127.0.0.1:certKey={self.cert}:privateKey={key}")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        sock.setblocking(False)
        site = build_admin_site(build_admin_root(_Routes(), lambda: True), reactor, idle_timeout=idle_timeout,
                                tls=context)
        port = reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, site)
        self.port_number = sock.getsockname()[1]
        sock.close()  # the reactor holds its own duplicate
        self.addCleanup(port.stopListening)

    def test_adopted_socket_serves_tls(self):
        """A listening socket adopted with the admin factory serves HTTPS (the hot upgrade's path)."""
        self.serve()
        context = ssl.create_default_context(cafile=self.cert)

        def fetch():
            conn = http.client.HTTPSConnection("127.0.0.1", self.port_number, context=context, timeout=10)
            try:
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                return response.status, response.read()
            finally:
                conn.close()

        return threads.deferToThread(fetch).addCallback(self.assertEqual, (200, b"ok\n"))

    def test_silent_client_is_closed(self):
        """A client that connects and never starts TLS is closed after admin.idle_timeout."""
        self.serve(idle_timeout=0.5)

        def silent():
            with socket.create_connection(("127.0.0.1", self.port_number), timeout=20) as s:
                try:
                    return s.recv(100)  # b"": closed (a TLS close may also reset the connection)
                except ConnectionResetError:
                    return b""

        return threads.deferToThread(silent).addCallback(self.assertEqual, b"")
