# -*- test-case-name: metaproxy.test.test_adminauth -*-
"""
HTTP basic auth for the admin listener, as Prometheus' C{web.yml} does it:
users with bcrypt hashes (C{htpasswd -nBC 10 USER}, or Python's C{bcrypt}).

 - bcrypt is slow on purpose (tens of milliseconds), so it never runs on
   the reactor thread: at most C{max_checking} checks run in the reactor's
   thread pool, at most C{max_waiting} more wait, and beyond that a
   request gets 503 at once (counted as C{busy}).
 - A credential that passed once is remembered (at most C{remember} of
   them, keyed by an HMAC under a per-process random key), so that a
   scrape every few seconds costs one bcrypt per process, not one per
   scrape. Failures are never remembered.
 - An unknown user costs a bcrypt check too (against a dummy hash), so
   the answer time does not tell which users exist; bcrypt itself
   compares in constant time.
 - Failed attempts are counted by reason (C{wrong}: unknown user or wrong
   password; C{malformed}: an C{Authorization} header that is not basic
   auth; C{busy}) for C{metaproxy_admin_auth_failures_total}.

L{guard_root} wraps the admin resource tree so that every path except the
open ones (by default C{/healthz} and C{/readyz}, for probes) needs the
credential.
"""

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import OrderedDict, deque

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.util import DeferredResource

log = Logger()

#: The paths C{admin.open_paths} may name (C{/metrics} is the Prometheus reporter's).
PATHS = ("/", "/healthz", "/readyz", "/routes", "/metrics")

#: A bcrypt hash as C{htpasswd -B} and Python's bcrypt write it.
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")

#: The longest C{Authorization} header looked at.
MAX_HEADER = 1024

REASONS = ("wrong", "malformed", "busy")


def bcrypt_problem():
    """@return: why bcrypt cannot be used here, or L{None}."""
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        return "basic auth needs the bcrypt package (pip install bcrypt)"
    return None


def user_problem(user, hashed):
    """@return: why C{user}/C{hashed} cannot be a basic-auth user, or L{None}."""
    if not user or ":" in user or any(c.isspace() or not c.isprintable() for c in user):
        return "a user name must be printable, without spaces or ':'"
    if not _BCRYPT.fullmatch(hashed):
        return "expected a bcrypt hash ($2b$10$ and 53 characters; make one with htpasswd -nBC 10 USER)"
    return None


def _bcrypt_check(password, hashed):
    import bcrypt

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # e.g. bcrypt >= 5 refuses passwords over 72 bytes
        return False


class TooBusy(Exception):
    """Too many credential checks run or wait: the request is refused without one."""


class BasicAuthChecker:
    """
    Checks C{Authorization: Basic ...} headers against bcrypt hashes, off
    the reactor thread, bounded.

    @ivar failures: C{{reason: count}} of refused attempts (see L{REASONS}).
    @ivar checks: bcrypt checks run so far.
    """

    def __init__(self, users, reactor, max_checking=2, max_waiting=32, remember=64, check=_bcrypt_check,
                 run=None):
        """
        @param users: C{{user: bcrypt hash}}.
        @param reactor: runs the checks in its thread pool (unless C{run}).
        @param check: C{check(password bytes, hash bytes) -> bool} (tests
            pass a fast one).
        @param run: C{run(f, *args) -> Deferred} running C{f} off the
            reactor thread; the reactor's thread pool by default.
        """
        self._users = {u.encode("utf-8"): h.encode("ascii") for u, h in users.items()}
        self._dummy = next(iter(self._users.values()), b"")
        self._check = check
        self._run = run or (lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
        self.max_checking = max(1, max_checking)
        self.max_waiting = max_waiting
        self.remember = remember
        self._key = os.urandom(32)
        self._good = OrderedDict()
        self._running = 0
        self._waiting = deque()
        self.failures = {reason: 0 for reason in REASONS}
        self.checks = 0

    def authorize(self, header):
        """
        @param header: the C{Authorization} header (bytes), or L{None}.
        @return: a L{Deferred} firing with the user name when the
            credential is right, with L{None} when it is missing, wrong or
            malformed; failing with L{TooBusy} when too many checks wait.
        """
        if header is None:
            return defer.succeed(None)
        parsed = self._parse(header)
        if parsed is None:
            self.failures["malformed"] += 1
            return defer.succeed(None)
        user, password = parsed
        token = hmac.new(self._key, user + b"\0" + password, hashlib.sha256).digest()
        if token in self._good:
            self._good.move_to_end(token)
            return defer.succeed(self._good[token])
        hashed = self._users.get(user)
        if self._running >= self.max_checking and len(self._waiting) >= self.max_waiting:
            self.failures["busy"] += 1
            return defer.fail(TooBusy(f"{self._running + len(self._waiting)} admin credential checks already wait"))
        d = defer.Deferred()
        self._waiting.append((password, hashed, d))
        self._next()
        return d.addCallback(self._checked, user, token, hashed is not None)

    def _parse(self, header):
        if len(header) > MAX_HEADER:
            return None
        scheme, _, encoded = header.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(b":")
        if not sep:
            return None
        return user, password

    def _next(self):
        while self._waiting and self._running < self.max_checking:
            password, hashed, d = self._waiting.popleft()
            self._running += 1
            self.checks += 1
            # an unknown user is checked against a real hash too: the same cost
            ran = self._run(self._check, password, hashed if hashed is not None else self._dummy)
            ran.addBoth(self._ran, d)

    def _ran(self, result, d):
        self._running -= 1
        self._next()
        if not isinstance(result, bool):  # a Failure: a bug in the check
            log.failure("checking an admin credential failed", result)
            result = False
        d.callback(result)

    def _checked(self, ok, user, token, known):
        if not (ok and known):
            self.failures["wrong"] += 1
            return None
        name = user.decode("utf-8", "replace")
        self._good[token] = name
        while len(self._good) > self.remember:
            self._good.popitem(last=False)
        return name


class _Answer(Resource):
    """A fixed answer: 401 asking for basic auth, or 503."""

    isLeaf = True

    def __init__(self, code, text, challenge=False):
        super().__init__()
        self._code, self._text, self._challenge = code, text, challenge

    def render(self, request):
        """@return: the fixed text, with C{WWW-Authenticate} on a 401."""
        request.setResponseCode(self._code)
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"cache-control", b"no-store")
        if self._challenge:
            request.setHeader(b"www-authenticate", b'Basic realm="metaproxy admin", charset="UTF-8"')
        return self._text.encode() + b"\n"


class GuardedRoot(Resource):
    """
    The admin root behind basic auth: the open paths go straight to the
    wrapped root; every other path (C{/} included, unless open) is served
    only once L{BasicAuthChecker.authorize} accepted the request's
    credential.
    """

    def __init__(self, root, checker, open_paths):
        """
        @param root: the admin L{Resource} tree (reporters may mount more on it later).
        @param checker: a L{BasicAuthChecker}.
        @param open_paths: paths such as C{"/healthz"} served without a credential.
        """
        super().__init__()
        self.root = root
        self.checker = checker
        self._open = {p.strip("/").encode() for p in open_paths}

    def getChildWithDefault(self, path, request):
        """@return: the wrapped child, at once when C{path} is open, else once the credential passed."""
        if path in self._open:
            return self.root.getChildWithDefault(path, request)
        d = self.checker.authorize(request.getHeader(b"authorization"))

        def decided(user):
            if user is None:
                return _Answer(401, "unauthorized: this admin path needs a user and password", challenge=True)
            return self.root.getChildWithDefault(path, request)

        def busy(failure):
            failure.trap(TooBusy)
            return _Answer(503, "too many admin logins at once; try again")

        return DeferredResource(d.addCallbacks(decided, busy))


def guard_root(root, admin_config, reactor, checker=None):
    """
    @param admin_config: a L{metaproxy.config.AdminConfig}.
    @return: C{(resource to serve, checker or None)}: C{root} as it is
        when no C{basic_auth_users} are configured, else a L{GuardedRoot}.
    """
    if not admin_config.basic_auth_users:
        return root, None
    checker = checker or BasicAuthChecker(admin_config.basic_auth_users, reactor)
    return GuardedRoot(root, checker, admin_config.open_paths), checker
