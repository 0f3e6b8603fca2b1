# -*- test-case-name: metaproxy.test.test_security_credentials -*-
"""
metaproxy's own Kerberos credentials, kept fresh on a clock.

A ticket-granting ticket is fetched from the keytab at start, in a thread
(the KDC may be slow or away), and fetched again after C{renew_ratio} of
its lifetime, well before it expires; each fetch goes into a new in-memory
credential cache, so a renewal never disturbs a negotiation that is using
the previous one. A failed fetch is retried with a doubling delay (capped)
while the old credentials, if any, stay in use until they expire.

Only state changes are logged: the first failure (one line naming the
principal, the keytab and why), and the recovery.
"""

import itertools
import os

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from metaproxy.security.sasl import SaslError, acquire_initiator

log = Logger()

_caches = itertools.count(1)


class CredentialsUnavailable(Exception):
    """metaproxy has no valid Kerberos credentials right now (the reason is the message)."""


def memory_ccache():
    """@return: the name of a new, process-private in-memory credential cache."""
    return f"MEMORY:metaproxy-{os.getpid()}-{next(_caches)}"


def default_acquire(principal, keytab):
    """The blocking fetch: L{acquire_initiator} into a new in-memory cache."""
    return acquire_initiator(principal, keytab, memory_ccache())


@attrs.define(eq=False)
class KerberosCredentials:
    """
    Holds a principal's initiator credentials and renews them before they
    expire.

    @ivar clock: an L{IReactorTime}; renewals and retries are scheduled on it.
    @ivar principal: the client principal (C{name@REALM}).
    @ivar keytab: the keytab file holding its key.
    @ivar run: C{run(f, *args) -> Deferred}: runs a blocking call off the
        reactor thread (L{metaproxy.security.upstream.thread_runner}).
    @ivar acquire: C{(principal, keytab) -> (credentials, lifetime seconds)},
        blocking; L{default_acquire} when L{None}.
    @ivar renew_ratio: renew after this fraction of the lifetime (0.5..0.95).
    @ivar retry_min: first retry delay after a failed fetch, in seconds.
    @ivar retry_max: the cap of the doubling retry delay.
    @ivar credentials: the current credentials, or L{None}.
    @ivar expires_at: when they expire (clock time), or L{None}.
    @ivar renew_at: when the next fetch is scheduled, or L{None}.
    @ivar last_error: why the last fetch failed (empty after a success).
    @ivar counts: fetches by outcome, C{{"ok": n, "failed": n}}.
    """

    clock: object
    principal: str
    keytab: str
    run: object
    acquire: object = None
    renew_ratio: float = 0.8
    retry_min: float = 1.0
    retry_max: float = 60.0
    credentials: object = attrs.field(init=False, default=None)
    expires_at: object = attrs.field(init=False, default=None)
    renew_at: object = attrs.field(init=False, default=None)
    last_error: str = attrs.field(init=False, default="")
    counts: dict = attrs.field(init=False, factory=lambda: {"ok": 0, "failed": 0})
    _fetching: object = attrs.field(init=False, default=None)
    _waiters: list = attrs.field(init=False, factory=list)
    _timer: object = attrs.field(init=False, default=None)
    _failures: int = attrs.field(init=False, default=0)
    _stopped: bool = attrs.field(init=False, default=False)

    def start(self):
        """Fetch the first credentials now (in a thread)."""
        self._stopped = False
        self._fetch()

    def stop(self):
        """Cancel the scheduled renewal; waiting callers fail."""
        self._stopped = True
        self._cancel_timer()
        self._fail_waiters("Kerberos credentials stopped")

    def valid(self):
        """@return: L{True} while credentials are held and not expired."""
        return self.credentials is not None and (self.expires_at is None or self.clock.seconds() < self.expires_at)

    def seconds_left(self):
        """@return: seconds until the current credentials expire (0 when none)."""
        if not self.valid():
            return 0.0
        return max(self.expires_at - self.clock.seconds(), 0.0) if self.expires_at != float("inf") else float("inf")

    def current(self):
        """
        @return: a L{Deferred} firing with valid credentials: at once when
            held, after the fetch under way otherwise (one is started when
            none runs). It fails with L{CredentialsUnavailable} when that
            fetch fails.
        """
        if self.valid():
            return defer.succeed(self.credentials)
        if self._stopped:
            return defer.fail(CredentialsUnavailable("Kerberos credentials stopped"))
        d = defer.Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        if self._fetching is None:
            self._cancel_timer()
            self._fetch()
        return d

    def describe(self):
        """@return: a JSON-ready L{dict} of the credentials' state."""
        left = self.seconds_left()
        return {
            "principal": self.principal,
            "keytab": self.keytab,
            "valid": self.valid(),
            "seconds_left": None if left == float("inf") else round(left, 3),
            "next_renewal_in": None if self.renew_at is None else round(max(self.renew_at - self.clock.seconds(), 0), 3),
            "last_error": self.last_error or None,
            "fetches": dict(self.counts),
        }

    # -- fetching

    def _fetch(self):
        if self._fetching is not None or self._stopped:
            return
        acquire = self.acquire or default_acquire
        self.renew_at = None
        started = self.clock.seconds()
        d = self._fetching = self.run(acquire, self.principal, self.keytab)
        d.addCallbacks(self._fetched, self._fetch_failed, (started,), None, (started,))

    def _fetched(self, result, started):
        self._fetching = None
        if self._stopped:
            return
        credentials, lifetime = result
        self.counts["ok"] += 1
        if self.last_error:
            log.info("Kerberos credentials for {principal} fetched again", principal=self.principal)
        self.last_error = ""
        self._failures = 0
        self.credentials = credentials
        if lifetime == float("inf"):
            self.expires_at = float("inf")
        else:
            self.expires_at = started + lifetime
            self._schedule(max(lifetime * self.renew_ratio, self.retry_min))
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(credentials)

    def _fetch_failed(self, failure, started):
        self._fetching = None
        if self._stopped:
            return
        why = failure.getErrorMessage() if failure.check(SaslError) else (
            f"{failure.type.__name__}: {failure.getErrorMessage()}")
        self.counts["failed"] += 1
        if not self.last_error:
            log.error(
                "cannot get Kerberos credentials for {principal} from {keytab}: {reason}",
                principal=self.principal, keytab=self.keytab, reason=why,
            )
        self.last_error = why
        self._failures += 1
        if not self.valid():
            self.credentials = None
        delay = min(self.retry_min * 2 ** min(self._failures - 1, 30), self.retry_max)
        if self.expires_at not in (None, float("inf")) and self.valid():
            delay = min(delay, max(self.expires_at - self.clock.seconds(), 0.0))
        self._schedule(delay)
        self._fail_waiters(f"no Kerberos credentials for {self.principal}: {why}")

    def _schedule(self, delay):
        self._cancel_timer()
        self.renew_at = self.clock.seconds() + delay
        self._timer = self.clock.callLater(delay, self._due)

    def _due(self):
        self._timer = None
        self._fetch()

    def _cancel_timer(self):
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fail_waiters(self, why):
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.errback(CredentialsUnavailable(why))
