# -*- test-case-name: metaproxy.test.test_security_sasl -*-
"""
The SASL GSSAPI mechanism (RFC 4752) on both ends, as Cyrus SASL (used by
Pegasus's C++ code) and the JDK's GSSAPI SASL client (Java client) run it:

 1. the GSS-API context is established (Kerberos AP-REQ, and the AP-REP of
    mutual authentication);
 2. the B{security-layer step}: the server sends a 4-byte message wrapped
    under the context (octet 0: the layers it offers, 1 = none, 2 =
    integrity, 4 = confidentiality; octets 1..3: its largest buffer); the
    client answers with a wrapped message (octet 0: the one layer chosen,
    octets 1..3: its largest buffer, then the authorisation identity).

Pegasus never uses a layer after negotiation (its traffic stays plain), so
both ends here offer and choose layer 1, "none", with a zero buffer size.

These classes are synchronous and may block (a client's first step asks
the KDC for a service ticket): callers run every method in a thread (see
L{metaproxy.security.upstream}). The C{gssapi} binding is imported lazily so
that the rest of metaproxy runs without it.
"""

import functools
import os
import struct

#: Security layer bits (RFC 4752 section 3.3).
LAYER_NONE, LAYER_INTEGRITY, LAYER_CONFIDENTIALITY = 1, 2, 4

_LAYER_MESSAGE = struct.Struct(">I")


class SaslError(Exception):
    """The peer broke the mechanism's rules, or GSS-API refused a step."""


def _gssapi():
    try:
        import gssapi
    except ImportError as e:  # pragma: no cover - depends on the install
        raise SaslError(f"Kerberos needs the gssapi package (pip install 'metaproxy[kerberos]'): {e}") from None
    return gssapi


def gss_error_text(error):
    """@return: a one-line description of a GSS-API (or other) exception."""
    return " ".join(str(error).split()) or type(error).__name__


def _sasl_errors(what, f, *args):
    """
    @return: C{f(*args)}; any exception but L{SaslError} (the binding may
        raise from any context access) becomes a L{SaslError} starting
        with C{what}.
    """
    try:
        return f(*args)
    except SaslError:
        raise
    except Exception as e:
        raise SaslError(f"{what}: {gss_error_text(e)}") from None


def layer_message(layers, max_size=0):
    """@return: the 4 plain octets of a security-layer offer or choice."""
    return _LAYER_MESSAGE.pack(((layers & 0xFF) << 24) | (max_size & 0xFFFFFF))


def parse_layer_message(data):
    """
    @return: C{(layers, max_size, authzid bytes)} of an unwrapped
        security-layer message.
    @raise SaslError: if shorter than 4 octets.
    """
    if len(data) < 4:
        raise SaslError(f"security-layer message of {len(data)} bytes (expected at least 4)")
    word = _LAYER_MESSAGE.unpack_from(data)[0]
    return word >> 24, word & 0xFFFFFF, bytes(data[4:])


def short_name(principal):
    """
    @return: the user name Pegasus derives from a principal: the part before
        the first C{/} of the part before the last C{@}.
    """
    return principal.rpartition("@")[0].split("/", 1)[0] if "@" in principal else principal.split("/", 1)[0]


def acquire_initiator(principal, keytab, ccache):
    """
    Get a ticket-granting ticket for C{principal} from C{keytab} into the
    credential cache C{ccache} (blocking: talks to the KDC).

    @return: C{(credentials, lifetime seconds)}.
    @raise SaslError: with a one-line reason when the keytab is missing or
        unreadable or the KDC refuses.
    """
    gssapi = _gssapi()
    if not os.path.isfile(keytab):
        raise SaslError(f"keytab {keytab} does not exist")
    if not os.access(keytab, os.R_OK):
        raise SaslError(f"keytab {keytab} is not readable")
    try:
        name = gssapi.Name(principal, gssapi.NameType.kerberos_principal)
        creds = gssapi.Credentials(name=name, usage="initiate", store={"client_keytab": keytab, "ccache": ccache})
        lifetime = creds.lifetime  # asks the KDC for the TGT now, not at the first connection
    except Exception as e:
        raise SaslError(f"cannot get credentials for {principal} from keytab {keytab}: {gss_error_text(e)}") from None
    if lifetime is None:
        lifetime = float("inf")
    return creds, float(lifetime)


def keytab_acceptor(keytab):
    """
    @return: a callable (no arguments) that runs L{acquire_acceptor} on
        C{keytab}: what a L{metaproxy.security.downstream.NegotiatingHandler}
        calls, in a thread, for each client negotiation.
    """
    return functools.partial(acquire_acceptor, keytab)


def acquire_acceptor(keytab):
    """
    @return: acceptor credentials for any service key in C{keytab}.
    @raise SaslError: with a one-line reason.
    """
    gssapi = _gssapi()
    try:
        if not keytab:  # the library's default (KRB5_KTNAME, /etc/krb5.keytab)
            return gssapi.Credentials(usage="accept")
        return gssapi.Credentials(usage="accept", store={"keytab": keytab})
    except Exception as e:
        raise SaslError(f"cannot use keytab {keytab} to accept Kerberos: {gss_error_text(e)}") from None


class GssapiClient:
    """
    The client end: L{start} gives the initial response, L{step} answers each
    challenge until the server reports success.

    @ivar done: L{True} once the security-layer step was answered.
    """

    def __init__(self, service, host, credentials, authzid=""):
        """
        @param service: the server's service name (Pegasus C{service_name}).
        @param host: its host part (Pegasus C{service_fqdn}).
        @param credentials: initiator credentials (L{acquire_initiator}).
        @param authzid: the authorisation identity sent in the layer step
            (empty: act as the authenticated principal).
        """
        gssapi = _gssapi()
        self.target = f"{service}/{host}"
        self.authzid = authzid.encode("utf-8")
        self.done = False
        flags = gssapi.RequirementFlag.mutual_authentication | gssapi.RequirementFlag.integrity
        try:
            name = gssapi.Name(f"{service}@{host}", gssapi.NameType.hostbased_service)
            self._ctx = gssapi.SecurityContext(name=name, creds=credentials, usage="initiate", flags=flags)
        except Exception as e:
            raise SaslError(f"cannot start a context for {self.target}: {gss_error_text(e)}") from None

    def start(self):
        """@return: the initial response (the first context token). Blocking."""
        try:
            return self._ctx.step() or b""
        except Exception as e:
            raise SaslError(f"cannot get a service ticket for {self.target}: {gss_error_text(e)}") from None

    def step(self, challenge):
        """
        @return: the response to one server challenge: the next context
            token, an empty response once the context is up, then the
            wrapped layer choice.
        @raise SaslError: on a bad token or layer offer.
        """
        return _sasl_errors(f"GSSAPI failed with {self.target}", self._step, challenge)

    def _step(self, challenge):
        if self.done:
            raise SaslError("server sent a challenge after the security-layer step")
        if not self._ctx.complete:
            try:
                token = self._ctx.step(challenge)
            except Exception as e:
                raise SaslError(f"mutual authentication with {self.target} failed: {gss_error_text(e)}") from None
            return token or b""
        try:
            offer = self._ctx.unwrap(challenge).message
        except Exception as e:
            raise SaslError(f"cannot unwrap the security-layer offer: {gss_error_text(e)}") from None
        layers, _, _ = parse_layer_message(offer)
        if not layers & LAYER_NONE:
            raise SaslError(f"server requires a security layer (offered {layers:#x}); Pegasus never uses one")
        try:
            answer = self._ctx.wrap(layer_message(LAYER_NONE) + self.authzid, False).message
        except Exception as e:
            raise SaslError(f"cannot wrap the security-layer choice: {gss_error_text(e)}") from None
        self.done = True
        return answer

    def established(self):
        """@return: L{True} once the GSS-API context is complete."""
        try:
            return bool(self._ctx.complete)
        except Exception:
            return False


class GssapiServer:
    """
    The server end: feed it each client message with L{step}; it answers
    C{(False, challenge)} until it returns C{(True, principal)}.
    """

    def __init__(self, credentials):
        """@param credentials: acceptor credentials (L{acquire_acceptor})."""
        gssapi = _gssapi()
        self._ctx = gssapi.SecurityContext(creds=credentials, usage="accept")
        self._offered = False
        self._ack_pending = False
        self.principal = None

    def step(self, token):
        """
        @return: C{(False, challenge bytes)} while going on, C{(True,
            client principal)} on success.
        @raise SaslError: on any failure (the session must then be closed).
        """
        return _sasl_errors("Kerberos authentication failed", self._step, token)

    def _step(self, token):
        ctx = self._ctx
        if not ctx.complete:
            try:
                out = ctx.step(token)
            except Exception as e:
                raise SaslError(f"Kerberos authentication failed: {gss_error_text(e)}") from None
            if not ctx.complete:
                return False, out or b""
            self.principal = str(ctx.initiator_name)
            if out:  # the AP-REP; the client answers with an empty response
                self._ack_pending = True
                return False, out
            return False, self._offer()
        if self._ack_pending:
            self._ack_pending = False
            if token:
                raise SaslError("non-empty response after the context was established")
            return False, self._offer()
        if not self._offered:  # pragma: no cover - unreachable by construction
            raise SaslError("unexpected client message")
        try:
            choice = ctx.unwrap(token).message
        except Exception as e:
            raise SaslError(f"cannot unwrap the security-layer choice: {gss_error_text(e)}") from None
        layer, size, authzid = parse_layer_message(choice)
        if layer != LAYER_NONE:
            raise SaslError(f"client chose security layer {layer:#x}; only 1 (none) is offered")
        if size != 0:
            raise SaslError(f"client gave buffer size {size} with no security layer (must be 0)")
        authzid = authzid.decode("utf-8", "replace")
        if authzid and authzid not in (self.principal, short_name(self.principal)):
            raise SaslError(f"{self.principal} may not act as {authzid!r}")
        return True, self.principal

    def _offer(self):
        self._offered = True
        try:
            return self._ctx.wrap(layer_message(LAYER_NONE), False).message
        except Exception as e:
            raise SaslError(f"cannot wrap the security-layer offer: {gss_error_text(e)}") from None
