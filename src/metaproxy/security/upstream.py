# -*- test-case-name: metaproxy.test.test_security_upstream -*-
"""
SASL GSSAPI negotiation on metaproxy's own meta connections.

L{metaproxy.backend.connection.MetaConnection} calls
L{UpstreamNegotiator.negotiate} on every new connection before it marks it
usable, so a secured meta (C{mandatory_auth}) never sees an
unauthenticated query from metaproxy and every reconnect negotiates again.
The exchange is the client side of Pegasus's C{client_negotiation}:
C{SASL_LIST_MECHANISMS} -> C{SASL_SELECT_MECHANISMS("GSSAPI")} ->
C{SASL_INITIATE(token)} -> (C{SASL_CHALLENGE} / C{SASL_CHALLENGE_RESP})* ->
C{SASL_SUCC}. A meta without C{enable_auth} answers C{SASL_AUTH_DISABLE},
and one older than the security module C{ERR_HANDLER_NOT_FOUND}; both
count as success (as for Pegasus's own clients without
C{mandatory_auth}), since such a meta serves unauthenticated sessions.

Every GSS-API call runs in a thread (L{thread_runner}); the whole exchange
is bounded by C{timeout} on the injected clock, so a silent meta or a slow
KDC fails the attempt instead of hanging it.
"""

import attrs
from twisted.internet import defer, threads

from metaproxy.backend.client import CallError
from metaproxy.security.credentials import CredentialsUnavailable
from metaproxy.security.sasl import GssapiClient, SaslError
from metaproxy.wire import codes
from metaproxy.wire import negotiation as nego
from metaproxy.wire.binary import DecodeError

#: Most challenge rounds accepted (Kerberos needs 2: AP-REP, layer offer).
MAX_ROUNDS = 8

#: Outcomes, as L{UpstreamNegotiator.state} and metrics name them.
OK, DISABLED, FAILED, NEVER = "authenticated", "auth_disabled_by_meta", "failed", "not_yet"


class NegotiationFailed(Exception):
    """The meta did not accept metaproxy's Kerberos identity (the reason is the message)."""


def thread_runner(reactor):
    """
    @return: C{run(f, *args) -> Deferred} that calls C{f} in C{reactor}'s
        thread pool (bounded by its size; the rest queue).
    """

    def run(f, *args):
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    return run


def inline_runner(f, *args):
    """C{run} for tests: calls C{f} at once, on the calling thread."""
    return defer.maybeDeferred(f, *args)


@attrs.define(eq=False)
class UpstreamNegotiator:
    """
    Negotiates Kerberos on the connections to one cluster's metas.

    @ivar clock: an L{IReactorTime} bounding each negotiation.
    @ivar cluster_name: for messages, metrics and C{/routes}.
    @ivar credentials: a L{metaproxy.security.credentials.KerberosCredentials}.
    @ivar run: runs blocking GSS-API calls off the reactor thread.
    @ivar service_name: the metas' Kerberos service name.
    @ivar service_fqdn: the metas' service host part; each meta's own host
        when empty.
    @ivar timeout: seconds one whole negotiation may take.
    @ivar mechanism: C{(service, host, credentials) -> GssapiClient}-like
        (tests pass fakes); L{GssapiClient} when L{None}.
    @ivar state: the last outcome (L{OK}, L{DISABLED}, L{FAILED}, L{NEVER}).
    @ivar last_error: why the last negotiation failed.
    @ivar counts: negotiations by outcome.
    """

    clock: object
    cluster_name: str
    credentials: object
    run: object
    service_name: str = "pegasus"
    service_fqdn: str = ""
    timeout: float = 10.0
    mechanism: object = None
    state: str = attrs.field(init=False, default=NEVER)
    last_error: str = attrs.field(init=False, default="")
    last_ok_at: object = attrs.field(init=False, default=None)
    counts: dict = attrs.field(init=False, factory=lambda: {OK: 0, DISABLED: 0, FAILED: 0})

    def negotiate(self, proto, address):
        """
        Run the exchange on C{proto} (a connected
        L{metaproxy.backend.client.MetaClientProtocol}).

        @param address: the meta's C{"host:port"}.
        @return: a L{Deferred} firing with the outcome (L{OK} or
            L{DISABLED}) once the connection may carry queries, or failing
            with L{NegotiationFailed} (whose message says why, naming the
            cluster) within C{timeout}. Cancelling it stops the exchange.
        """
        d = self._exchange(proto, address)
        d.addTimeout(self.timeout, self.clock, self._timed_out)
        d.addCallbacks(self._succeeded, self._failed, errbackArgs=(address,))
        return d

    def describe(self):
        """@return: a JSON-ready L{dict} for C{/routes}: state, last error, counts."""
        now = self.clock.seconds()
        return {
            "mechanism": nego.GSSAPI,
            "state": self.state,
            "last_error": self.last_error or None,
            "last_ok_age": None if self.last_ok_at is None else round(now - self.last_ok_at, 3),
            "negotiations": dict(self.counts),
            "credentials": self.credentials.describe() if hasattr(self.credentials, "describe") else None,
        }

    def _timed_out(self, result, timeout):
        if isinstance(result, defer.Failure) and result.check(defer.CancelledError):
            return defer.Failure(NegotiationFailed(f"no answer within {timeout:g}s"))
        return result

    def _succeeded(self, outcome):
        self.counts[outcome] += 1
        self.state = outcome
        self.last_error = ""
        self.last_ok_at = self.clock.seconds()
        return outcome

    def _failed(self, failure, address):
        if failure.check(defer.CancelledError):
            return failure  # the connection was stopped: not a negotiation outcome
        if failure.check(NegotiationFailed, SaslError, CredentialsUnavailable, DecodeError, CallError):
            why = failure.getErrorMessage()
        else:
            why = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        self.counts[FAILED] += 1
        self.state = FAILED
        self.last_error = why
        raise NegotiationFailed(f"Kerberos negotiation with cluster {self.cluster_name} failed: {why}")

    @defer.inlineCallbacks
    def _exchange(self, proto, address):
        creds = yield self.credentials.current()
        msg = yield self._call(proto, nego.SASL_LIST_MECHANISMS)
        if msg is None:
            return DISABLED
        self._expect(msg, nego.SASL_LIST_MECHANISMS_RESP)
        offered = [m.strip() for m in msg.msg.decode("utf-8", "replace").split(",")]
        if nego.GSSAPI not in offered:
            raise NegotiationFailed(f"meta offers {msg.msg[:200]!r}, not GSSAPI")
        msg = yield self._call(proto, nego.SASL_SELECT_MECHANISMS, nego.GSSAPI.encode())
        if msg is None:
            return DISABLED
        self._expect(msg, nego.SASL_SELECT_MECHANISMS_RESP)
        host = self.service_fqdn or address.rpartition(":")[0]
        make = self.mechanism or GssapiClient
        mech = yield self.run(make, self.service_name, host, creds)
        token = yield self.run(mech.start)
        msg = yield self._call(proto, nego.SASL_INITIATE, token)
        for _ in range(MAX_ROUNDS):
            if msg is None:
                return DISABLED
            if msg.status == nego.SASL_SUCC:
                if not mech.established():
                    raise NegotiationFailed("meta answered SASL_SUCC before the Kerberos context was complete")
                return OK
            self._expect(msg, nego.SASL_CHALLENGE)
            answer = yield self.run(mech.step, msg.msg)
            msg = yield self._call(proto, nego.SASL_CHALLENGE_RESP, answer)
        raise NegotiationFailed(f"no SASL_SUCC after {MAX_ROUNDS} challenges")

    @defer.inlineCallbacks
    def _call(self, proto, status, payload=b""):
        """@return: the decoded answer, or L{None} when the meta has auth switched off."""
        response = yield proto.call(nego.NEGOTIATION, nego.encode_request_args(status, payload), self.timeout)
        if response.rpc_error == codes.ERR_HANDLER_NOT_FOUND:
            return None  # a meta older than the security module
        if response.rpc_error != codes.ERR_OK:
            raise NegotiationFailed(f"meta answered {nego.status_name(status)} with {response.rpc_error}")
        msg = nego.decode_response_result(response.body)
        if msg.status == nego.SASL_AUTH_DISABLE:
            return None
        if msg.status == nego.SASL_AUTH_FAIL:
            raise NegotiationFailed(f"meta answered {nego.status_name(status)} with SASL_AUTH_FAIL")
        return msg

    @staticmethod
    def _expect(msg, status):
        if msg.status != status:
            raise NegotiationFailed(f"meta answered {msg.status_name()}, expected {nego.status_name(status)}")
