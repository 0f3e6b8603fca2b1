# -*- test-case-name: metaproxy.test.test_zkauth -*-
"""
ZooKeeper credentials and ACLs: one implementation for the service
(L{metaproxy.routes.zkbridge}) and the CLI (L{metaproxy.cli.zkstore}).

 - L{ZooKeeperAuth}: the credential one kazoo session presents (digest
   C{user:password}, or SASL), read from the config or a file. Its secret
   never appears in a repr, a log line or C{/routes}: only L{describe}
   (scheme and user name) is ever shown.
 - ACL entries in zkCli's notation, C{scheme:id:perms} (for example
   C{digest:metaproxy:Kx9s...=:r}, C{world:anyone:cdrwa}): L{parse_acl},
   L{format_acl}.
 - L{creation_acl}: the ACL C{metaproxy routes} puts on what it creates:
   readable by the proxies, writable by operators only.
 - L{world_writable}: whether an ACL lets anyone who reaches ZooKeeper
   change a route.
"""

import os

import attrs
from kazoo.security import ACL, ANYONE_ID_UNSAFE, Id, Permissions, make_digest_acl_credential

DIGEST = "digest"
SASL = "sasl"
SCHEMES = (DIGEST, SASL)
SASL_MECHANISMS = ("DIGEST-MD5", "GSSAPI")

#: The permission letters of zkCli, in its order.
_LETTERS = (("c", Permissions.CREATE), ("d", Permissions.DELETE), ("r", Permissions.READ),
            ("w", Permissions.WRITE), ("a", Permissions.ADMIN))

#: Permissions that let their holder change routes: write a node's data,
#: create or delete table nodes, or change the ACL itself.
CHANGING = Permissions.WRITE | Permissions.CREATE | Permissions.DELETE | Permissions.ADMIN

#: The longest credential file read (a credential is one short line).
MAX_CREDENTIAL_BYTES = 4096


class CredentialError(ValueError):
    """A credential cannot be used; C{str()} says why, without the secret."""


@attrs.frozen
class ZooKeeperAuth:
    """
    The credential one ZooKeeper session presents.

    @ivar scheme: C{"digest"} or C{"sasl"}.
    @ivar secret: C{"user:password"} (digest, and SASL DIGEST-MD5), or
        C{""} (SASL GSSAPI: the ticket comes from the Kerberos cache or
        C{KRB5_CLIENT_KTNAME}). Hidden from C{repr}.
    @ivar mechanism: the SASL mechanism (C{DIGEST-MD5} or C{GSSAPI}).
    @ivar service: the SASL service name of the ZooKeeper servers.
    @ivar principal: the SASL GSSAPI client principal, or L{None}.
    """

    scheme: str
    secret: str = attrs.field(default="", repr=False)
    mechanism: str = "DIGEST-MD5"
    service: str = "zookeeper"
    principal: object = None

    @property
    def username(self):
        """@return: the user name (the part before the first C{:}), or the principal."""
        if self.secret:
            return self.secret.split(":", 1)[0]
        return self.principal or ""

    def describe(self):
        """@return: what may be shown: the scheme and the user, never the password."""
        if self.scheme == DIGEST:
            return f"digest as {self.username}"
        return f"sasl {self.mechanism}" + (f" as {self.username}" if self.username else "")

    def kazoo_options(self):
        """@return: the keyword arguments of L{kazoo.client.KazooClient} that present this credential."""
        if self.scheme == DIGEST:
            return {"auth_data": [(DIGEST, self.secret)]}
        options = {"mechanism": self.mechanism, "service": self.service}
        if self.mechanism == "DIGEST-MD5":
            user, password = self.secret.split(":", 1)
            options.update(username=user, password=password)
        if self.principal:
            options["principal"] = self.principal
        return {"sasl_options": options}

    def acl_id(self):
        """
        @return: the L{Id} ACL entries name this identity by: C{digest:user:hash}
            or C{sasl:user}.
        """
        if self.scheme == DIGEST:
            user, password = self.secret.split(":", 1)
            return Id(DIGEST, make_digest_acl_credential(user, password))
        return Id(SASL, self.username)


def check_secret(scheme, mechanism, secret):
    """@raise CredentialError: when C{secret} is no usable credential for C{scheme}/C{mechanism}."""
    if scheme == SASL and mechanism == "GSSAPI":
        if secret:
            raise CredentialError("SASL GSSAPI takes no password (the ticket comes from Kerberos)")
        return
    user, sep, password = secret.partition(":")
    if not sep or not user or not password:
        raise CredentialError("expected one line user:password")
    if any(c.isspace() or not c.isprintable() for c in user):
        raise CredentialError("the user name must be printable, without spaces")
    if any(c in "\r\n\0" for c in password):
        raise CredentialError("the password must be on one line")


def read_secret(path):
    """
    @return: the credential in the file at C{path}: its first line, without
        the line end (a trailing newline is common and is no part of it).
    @raise CredentialError: the file cannot be read, is empty, or too large.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CREDENTIAL_BYTES + 1)
    except OSError as e:
        raise CredentialError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_CREDENTIAL_BYTES:
        raise CredentialError(f"{path} is larger than {MAX_CREDENTIAL_BYTES} bytes: not a credential file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError(f"{path} is not UTF-8 text") from None
    lines = text.splitlines()
    secret = lines[0] if lines else ""
    if not secret:
        raise CredentialError(f"{path} is empty")
    return secret


def file_exposed(path):
    """@return: a warning when the credential file at C{path} is readable by everyone, else L{None}."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & 0o004:
        return f"{path} is readable by every user (chmod 0600 or 0640 it)"
    return None


def auth_from_config(auth_config):
    """
    @param auth_config: a L{metaproxy.config.ZooKeeperAuthConfig}, or L{None}.
    @return: its L{ZooKeeperAuth} (the file read now), or L{None}.
    @raise CredentialError: the credential cannot be used.
    """
    if auth_config is None:
        return None
    secret = auth_config.credential
    if auth_config.credential_file is not None:
        secret = read_secret(auth_config.credential_file)
    secret = secret or ""
    check_secret(auth_config.scheme, auth_config.mechanism, secret)
    return ZooKeeperAuth(
        auth_config.scheme, secret, auth_config.mechanism, auth_config.service, auth_config.principal
    )


def digest_auth(secret, where):
    """
    @param secret: C{"user:password"}.
    @param where: what the message names as its origin (a flag, a variable).
    @return: a digest L{ZooKeeperAuth}.
    @raise CredentialError: when C{secret} is not C{user:password}.
    """
    try:
        check_secret(DIGEST, None, secret)
    except CredentialError as e:
        raise CredentialError(f"{where}: {e}") from None
    return ZooKeeperAuth(DIGEST, secret)


def sasl_problem():
    """@return: why SASL cannot be used here (the pure-sasl package kazoo needs is missing), or L{None}."""
    try:
        import puresasl  # noqa: F401
    except ImportError:
        return "SASL needs the pure-sasl package (pip install pure-sasl; GSSAPI also needs kerberos)"
    return None


# ---------------------------------------------------------------- ACLs


def perms_text(perms):
    """@return: zkCli's letters for a permission mask, e.g. C{"cdrwa"}."""
    return "".join(letter for letter, bit in _LETTERS if perms & bit)


def parse_acl(text):
    """
    @param text: one entry in zkCli's notation, C{scheme:id:perms}
        (C{world:anyone:r}, C{digest:user:hash:cdrwa}, C{ip:10.0.0.1:r},
        C{sasl:ops:cdrwa}).
    @return: a kazoo L{ACL}.
    @raise ValueError: saying what is wrong.
    """
    scheme, sep, rest = text.strip().partition(":")
    ident, sep2, letters = rest.rpartition(":")
    if not sep or not sep2 or not scheme:
        raise ValueError(f"{text!r}: expected scheme:id:perms (e.g. digest:user:HASH:r)")
    if not letters or any(c not in "cdrwa" for c in letters):
        raise ValueError(f"{text!r}: perms must be letters of cdrwa")
    if scheme == DIGEST and ":" not in ident:
        raise ValueError(f"{text!r}: a digest id is user:base64-hash (see metaproxy routes digest)")
    if scheme == "world" and ident != "anyone":
        raise ValueError(f"{text!r}: the world scheme's only id is anyone")
    if not ident and scheme != "auth":
        raise ValueError(f"{text!r}: the id is empty")
    perms = 0
    for letter, bit in _LETTERS:
        if letter in letters:
            perms |= bit
    return ACL(perms, Id(scheme, ident))


def format_acl(acl):
    """@return: one ACL entry in zkCli's notation."""
    return f"{acl.id.scheme}:{acl.id.id}:{perms_text(acl.perms)}"


def world_writable(acls):
    """
    @param acls: a node's ACL (kazoo L{ACL}s).
    @return: the permission letters that let anyone change it or its
        children (C{world:anyone} with any of C{cdwa}), or C{""}.
    """
    perms = 0
    for acl in acls:
        if acl.id == ANYONE_ID_UNSAFE:
            perms |= acl.perms & CHANGING
    return perms_text(perms)


def creation_acl(configured, proxy, operator):
    """
    The ACL C{metaproxy routes} puts on the nodes it creates (a table's
    node, and the root when it does not exist yet).

    @param configured: the config's C{zookeeper.acl} as L{ACL}s, or an
        empty sequence: when given, it is used as it is.
    @param proxy: the proxies' L{ZooKeeperAuth} (C{zookeeper.auth}), or L{None}.
    @param operator: the operator's L{ZooKeeperAuth}, or L{None}.
    @return: a list of L{ACL}s: the operator may do everything, the
        proxies may read (C{world:anyone:r} when they read without a
        credential); without an operator credential, C{world:anyone:cdrwa}
        (which L{world_writable} flags).
    """
    if configured:
        return list(configured)
    if operator is None:
        return [ACL(Permissions.ALL, ANYONE_ID_UNSAFE)]
    acl = [ACL(Permissions.ALL, operator.acl_id())]
    reader = ANYONE_ID_UNSAFE if proxy is None else proxy.acl_id()
    if reader != acl[0].id:
        acl.append(ACL(Permissions.READ, reader))
    return acl
