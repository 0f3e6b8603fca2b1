"""
L{metaproxy.security.credentials}: fetching, renewal before expiry and
expiry, on a L{Clock} with a fake fetch, and once against a real MIT KDC
with a short ticket lifetime.
"""

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metaproxy.security.credentials import CredentialsUnavailable, KerberosCredentials
from metaproxy.security.sasl import SaslError
from metaproxy.security.upstream import inline_runner, thread_runner
from metaproxy.testing import kdc as kdctest


class _FakeFetch:
    """Hands out numbered credentials with a fixed lifetime, or fails when told."""

    def __init__(self, lifetime=100.0):
        self.lifetime = lifetime
        self.calls = 0
        self.error = None

    def __call__(self, principal, keytab):
        self.calls += 1
        if self.error is not None:
            raise SaslError(self.error)
        return f"creds-{self.calls}", self.lifetime


class ClockTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.fetch = _FakeFetch()
        self.creds = KerberosCredentials(self.clock, "mp@R", "/k", inline_runner, acquire=self.fetch,
                                         renew_ratio=0.8, retry_min=1.0, retry_max=8.0)
        self.creds.start()

    def test_renewed_before_expiry(self):
        """New credentials are fetched at 80 % of the lifetime, before the old ones expire."""
        self.assertEqual((self.creds.credentials, self.creds.renew_at), ("creds-1", 80.0))
        self.clock.advance(79.9)
        self.assertEqual(self.fetch.calls, 1)
        self.clock.advance(0.1)
        self.assertEqual((self.fetch.calls, self.creds.credentials, self.creds.expires_at), (2, "creds-2", 180.0))
        self.assertTrue(self.creds.valid())
        self.assertEqual(self.creds.counts, {"ok": 2, "failed": 0})

    def test_renewal_failure_keeps_old_until_expiry(self):
        """A failed renewal keeps the valid credentials, retries with backoff, and they lapse at expiry."""
        self.fetch.error = "KDC unreachable"
        self.clock.advance(80)
        self.assertEqual((self.creds.credentials, self.creds.last_error), ("creds-1", "KDC unreachable"))
        self.assertEqual(self.successResultOf(self.creds.current()), "creds-1")
        self.clock.pump([1, 2, 4, 8])  # retries 1, 2, 4, 8 s apart
        self.assertEqual((self.fetch.calls, self.creds.renew_at), (6, 100.0))  # the next one at expiry, not later
        self.clock.advance(100 - self.clock.seconds())
        self.assertEqual(self.fetch.calls, 7)
        self.assertFalse(self.creds.valid())
        self.assertEqual(self.creds.seconds_left(), 0.0)
        failure = self.failureResultOf(self.creds.current(), CredentialsUnavailable)
        self.assertIn("KDC unreachable", failure.getErrorMessage())

    def test_recovers(self):
        """After failures, the next successful fetch clears the error and schedules renewal again."""
        self.fetch.error = "nope"
        self.clock.advance(101)
        self.assertFalse(self.creds.valid())
        self.fetch.error = None
        d = self.creds.current()
        self.assertEqual(self.successResultOf(d), f"creds-{self.fetch.calls}")
        self.assertEqual(self.creds.last_error, "")
        self.assertEqual(self.creds.renew_at, self.clock.seconds() + 80.0)

    def test_waiters_share_one_fetch(self):
        """Callers waiting while a fetch runs share it (one fetch, every waiter answered)."""
        pending = defer.Deferred()
        creds = KerberosCredentials(self.clock, "mp@R", "/k", lambda f, *a: pending, acquire=self.fetch)
        waits = [creds.current(), creds.current()]
        pending.callback(("c", 50.0))
        self.assertEqual([self.successResultOf(w) for w in waits], ["c", "c"])

    def test_stop_cancels_renewal(self):
        """After stop, no renewal runs and callers fail at once."""
        self.creds.stop()
        self.clock.advance(1000)
        self.assertEqual(self.fetch.calls, 1)
        self.failureResultOf(self.creds.current(), CredentialsUnavailable)

    def test_describe(self):
        """The state page shows validity, time left and the next renewal."""
        self.clock.advance(30)
        info = self.creds.describe()
        self.assertEqual((info["valid"], info["seconds_left"], info["next_renewal_in"]), (True, 70.0, 50.0))


class RealKdcTests(TestCase):
    timeout = 60

    def setUp(self):
        kdc = kdctest.shared_kdc()
        kdctest.use_realm(self, kdc)
        self.kdc = kdc

    @defer.inlineCallbacks
    def test_short_ticket_renewed(self):
        """
        With a 20 s ticket from a real KDC, the renewal is scheduled at 16 s
        and, when the clock gets there, fetches a new ticket from the keytab.
        """
        principal, keytab = self.kdc.add_principal(self.kdc.unique("short"), max_life="20 seconds")
        clock = Clock()
        creds = KerberosCredentials(clock, principal, keytab, thread_runner(reactor))
        first = yield creds.current()
        self.assertTrue(0 < creds.expires_at <= 20, creds.expires_at)
        self.assertAlmostEqual(creds.renew_at, creds.expires_at * 0.8, places=3)
        self.assertIn(principal, str(first.name))
        clock.advance(creds.renew_at)
        yield creds._fetching
        self.assertIsNot(creds.credentials, first)
        self.assertEqual(creds.counts, {"ok": 2, "failed": 0})
        self.assertLessEqual(creds.expires_at - clock.seconds(), 20)

    @defer.inlineCallbacks
    def test_missing_keytab(self):
        """A missing keytab fails with a message naming it, and is counted."""
        clock = Clock()
        creds = KerberosCredentials(clock, f"ghost@{self.kdc.realm}", "/nonexistent/metaproxy.keytab",
                                    thread_runner(reactor))
        with self.assertRaises(CredentialsUnavailable) as caught:
            yield creds.current()
        self.assertIn("keytab /nonexistent/metaproxy.keytab does not exist", str(caught.exception))
        self.assertEqual(creds.counts["failed"], 1)
        creds.stop()

    @defer.inlineCallbacks
    def test_principal_removed_from_kdc(self):
        """When the KDC no longer knows the principal, the renewal fails with the KDC's reason."""
        principal, keytab = self.kdc.add_principal(self.kdc.unique("gone"))
        clock = Clock()
        creds = KerberosCredentials(clock, principal, keytab, thread_runner(reactor))
        yield creds.current()
        self.kdc.kadmin(f"delprinc -force {principal}")
        clock.advance(creds.renew_at)
        yield creds._fetching.addErrback(lambda f: None) if creds._fetching is not None else None
        self.assertIn("cannot get credentials for", creds.last_error)
        self.assertTrue(creds.valid())  # the old ticket is still good until it expires
        creds.stop()
