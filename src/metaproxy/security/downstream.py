# -*- test-case-name: metaproxy.test.test_security_downstream -*-
"""
Answer clients' C{RPC_NEGOTIATION} as a secured Pegasus meta does.

L{NegotiatingHandler} wraps the listener's L{IRequestHandler}. Per client
session it runs the server side of Pegasus's negotiation
(C{server_negotiation.cpp}): C{SASL_LIST_MECHANISMS} -> C{"GSSAPI"};
C{SASL_SELECT_MECHANISMS("GSSAPI")} -> C{SASL_SELECT_MECHANISMS_RESP};
C{SASL_INITIATE} / C{SASL_CHALLENGE_RESP} -> C{SASL_CHALLENGE} until
C{SASL_SUCC}. Like the meta, any violation (a status out of order, an
unknown mechanism, a Kerberos failure) ends the session: the connection is
closed without a reply (the meta's C{fail_negotiation()} closes the
session, so its pending answer is never sent).

With C{mandatory}, a session that has not negotiated successfully gets
what a meta with C{mandatory_auth} gives it for any RPC outside the
negotiation and failure-detector names: the message is dropped and the
connection closed (C{negotiation_manager::on_rpc_recv_msg} returns false,
and the session's reader then calls C{on_failure}). Without it, such
sessions are served as before.

The allow-list names the principals served: a client that authenticates
as anyone else fails its negotiation (closed, as above) instead of
receiving C{SASL_SUCC}. An entry matches the full principal
(C{name/host@REALM}) or the user name Pegasus derives from it (C{name}).

Every GSS-API call runs off the reactor thread (C{run}); the handler keeps
state only per open connection (a weak map), at most one negotiation step
in flight per connection.
"""

import weakref

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from metaproxy.interfaces import IRequestHandler
from metaproxy.security.sasl import GssapiServer, SaslError, short_name
from metaproxy.wire import negotiation as nego
from metaproxy.wire.binary import DecodeError
from metaproxy.wire.frame import Reply

log = Logger()

#: RPCs a meta with C{mandatory_auth} accepts on an unauthenticated session.
ALLOWED_UNAUTHENTICATED = frozenset(
    {
        nego.NEGOTIATION,
        nego.NEGOTIATION_ACK,
        "RPC_FD_FAILURE_DETECTOR_PING",
        "RPC_FD_FAILURE_DETECTOR_PING_ACK",
    }
)

#: Seconds between two log lines of the same kind of refusal.
LOG_EVERY = 10.0

#: Outcomes counted in L{NegotiatingHandler.counts}.
OUTCOMES = ("authenticated", "failed", "not_allowed", "refused_unauthenticated")


def _reply(status, msg=b""):
    return Reply(nego.encode_response_result(status, msg))


@attrs.define(eq=False)
class _Session:
    expect: int = nego.SASL_LIST_MECHANISMS
    mech: object = None
    principal: object = None
    busy: bool = False


@implementer(IRequestHandler)
@attrs.define(eq=False)
class NegotiatingHandler:
    """
    An L{IRequestHandler} that negotiates Kerberos with clients and then
    passes their requests to C{inner}.

    @ivar inner: the handler for everything but C{RPC_NEGOTIATION}.
    @ivar acceptor: C{() -> credentials} for the server end (blocking, run
        in a thread), or L{None} to answer C{SASL_AUTH_DISABLE} as an
        unsecured meta does.
    @ivar run: C{run(f, *args) -> Deferred} for blocking calls.
    @ivar mandatory: refuse sessions that have not negotiated.
    @ivar allow: principals or user names served (empty: every
        authenticated principal).
    @ivar mechanism: C{(credentials) -> GssapiServer}-like (tests pass
        fakes); L{GssapiServer} when L{None}.
    @ivar clock: an L{IReactorTime}; with it each kind of refusal is logged
        at most once per C{LOG_EVERY} seconds (a hostile client reconnecting
        in a loop cannot flood the log; L{counts} counts every one).
    @ivar counts: sessions by outcome (L{OUTCOMES}).
    """

    inner: object
    acceptor: object = None
    run: object = None
    mandatory: bool = False
    allow: frozenset = frozenset()
    mechanism: object = None
    clock: object = None
    counts: dict = attrs.field(init=False, factory=lambda: dict.fromkeys(OUTCOMES, 0))
    _sessions: object = attrs.field(init=False, factory=weakref.WeakKeyDictionary)
    _credentials: object = attrs.field(init=False, default=None)
    _logged: dict = attrs.field(init=False, factory=dict)

    def handle(self, request, connection):
        """
        @return: the negotiation answer for C{RPC_NEGOTIATION}; for anything
            else, C{inner}'s answer, or (mandatory, not negotiated) a
            L{Deferred} that never fires while the connection is closed.
        """
        if request.name == nego.NEGOTIATION:
            if self.acceptor is None:
                return _reply(nego.SASL_AUTH_DISABLE)
            return self._negotiate(request, connection)
        if self.mandatory and request.name not in ALLOWED_UNAUTHENTICATED:
            session = self._sessions.get(connection)
            if session is None or session.principal is None:
                self.counts["refused_unauthenticated"] += 1
                self._log("refused {rpc} from {peer}: the session has not negotiated Kerberos",
                          rpc=request.name, peer=_peer(connection))
                return self._close(connection)
        return self.inner.handle(request, connection)

    def principal_of(self, connection):
        """@return: the principal C{connection} authenticated as, or L{None}."""
        session = self._sessions.get(connection)
        return None if session is None else session.principal

    def adopt(self, connection, principal):
        """
        Mark C{connection} as authenticated as C{principal}: a connection a
        hot upgrade handed over after it negotiated with the old process
        (L{principal_of} there), so that C{mandatory} does not close it.
        """
        self._sessions[connection] = _Session(expect=nego.INVALID, principal=principal)

    # -- the server side of the exchange

    def _negotiate(self, request, connection):
        try:
            msg = nego.decode_request_args(request.args)
        except DecodeError as e:
            return self._fail(connection, f"bad negotiation request: {e}")
        session = self._sessions.get(connection)
        if session is None:
            session = self._sessions[connection] = _Session()
        if session.busy:
            return self._fail(connection, "a negotiation request arrived before the last one was answered")
        if session.principal is not None or msg.status != session.expect:
            return self._fail(connection, f"got {msg.status_name()}, expected {nego.status_name(session.expect)}")
        if msg.status == nego.SASL_LIST_MECHANISMS:
            session.expect = nego.SASL_SELECT_MECHANISMS
            return _reply(nego.SASL_LIST_MECHANISMS_RESP, nego.GSSAPI.encode())
        if msg.status == nego.SASL_SELECT_MECHANISMS:
            if msg.msg != nego.GSSAPI.encode():
                return self._fail(connection, f"mechanism {msg.msg[:64]!r} is not supported")
            session.expect = nego.SASL_INITIATE
            return _reply(nego.SASL_SELECT_MECHANISMS_RESP)
        session.busy = True
        d = self._step(session, msg.msg)
        d.addCallbacks(self._stepped, self._step_failed, (session, connection), None, (session, connection))
        return d

    @defer.inlineCallbacks
    def _step(self, session, token):
        if session.mech is None:
            if self._credentials is None:
                self._credentials = yield self.run(self.acceptor)
            make = self.mechanism or GssapiServer
            session.mech = make(self._credentials)
        result = yield self.run(session.mech.step, token)
        return result

    def _stepped(self, result, session, connection):
        session.busy = False
        done, value = result
        if not done:
            session.expect = nego.SASL_CHALLENGE_RESP
            return _reply(nego.SASL_CHALLENGE, value)
        if self.allow and value not in self.allow and short_name(value) not in self.allow:
            self.counts["not_allowed"] += 1
            self._log("refused Kerberos principal {principal} from {peer}: not in security.clients.allow",
                      principal=value, peer=_peer(connection))
            return self._close(connection)
        session.principal = value
        session.mech = None
        self.counts["authenticated"] += 1
        return _reply(nego.SASL_SUCC)

    def _step_failed(self, failure, session, connection):
        session.busy = False
        why = failure.getErrorMessage() if failure.check(SaslError) else f"{failure.type.__name__}: {failure.getErrorMessage()}"
        self._credentials = None  # a rotated or repaired keytab is read again next time
        return self._fail(connection, why)

    def _fail(self, connection, why):
        self.counts["failed"] += 1
        self._log("Kerberos negotiation with {peer} failed: {reason}", peer=_peer(connection), reason=why)
        return self._close(connection)

    def _log(self, fmt, **kw):
        """Warn with C{fmt}, at most once per L{LOG_EVERY} s per message when a clock is given."""
        if self.clock is not None:
            now = self.clock.seconds()
            last, suppressed = self._logged.get(fmt, (None, 0))
            if last is not None and now - last < LOG_EVERY:
                self._logged[fmt] = (last, suppressed + 1)
                return
            self._logged[fmt] = (now, 0)
            kw["suppressed"] = suppressed
            if suppressed:
                fmt += " ({suppressed} more like it since the last line)"
        log.warn(fmt, **kw)

    def _close(self, connection):
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.loseConnection()
        return defer.Deferred()  # cancelled when the connection is gone


def _peer(connection):
    transport = getattr(connection, "transport", None)
    if transport is None:
        return "?"
    peer = transport.getPeer()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
