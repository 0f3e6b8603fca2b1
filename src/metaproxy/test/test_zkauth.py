# -*- test-case-name: metaproxy.test.test_zkauth -*-
"""
Tests for L{metaproxy.routes.zkauth}: credentials (files, the config, the
operator's flag and variables), zkCli-style ACL entries, the ACL
C{metaproxy routes} creates with, and what counts as world-writable.
"""

import os

from kazoo.security import ACL, ANYONE_ID_UNSAFE, Id, Permissions, make_digest_acl_credential
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.cli.common import CommandError
from metaproxy.cli.zkstore import describe_acl_entry, operator_auth
from metaproxy.config import ConfigError, parse_config
from metaproxy.routes import zkauth


class SecretTests(SynchronousTestCase):
    def write(self, data, mode=0o600):
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def test_first_line_without_its_end(self):
        """A credential file's first line is the credential; the newline and later lines are not."""
        self.assertEqual(zkauth.read_secret(self.write(b"ops:pw:with:colons\r\nignored\n")), "ops:pw:with:colons")

    def test_unusable_files(self):
        """Missing, empty, huge and non-UTF-8 files are refused with a reason naming the file only."""
        for path, why in (
            ("/nonexistent/cred", "cannot read /nonexistent/cred"),
            (self.write(b""), "is empty"),
            (self.write(b"x" * 5000), "larger than"),
            (self.write(b"\xff\xfe:x"), "not UTF-8"),
        ):
            with self.assertRaises(zkauth.CredentialError) as e:
                zkauth.read_secret(path)
            self.assertIn(why, str(e.exception))

    def test_digest_needs_user_and_password(self):
        """A digest credential is user:password, both non-empty, the user without spaces."""
        for bad in ("nocolon", ":pw", "user:", "us er:pw"):
            self.assertRaises(zkauth.CredentialError, zkauth.check_secret, "digest", None, bad)
        zkauth.check_secret("digest", None, "user:p w:x")

    def test_secret_never_in_repr_or_description(self):
        """repr and describe() name the scheme and user, never the password."""
        auth = zkauth.ZooKeeperAuth("digest", "ops:hunter2")
        self.assertNotIn("hunter2", repr(auth))
        self.assertEqual(auth.describe(), "digest as ops")
        self.assertEqual(auth.kazoo_options(), {"auth_data": [("digest", "ops:hunter2")]})
        self.assertEqual(auth.acl_id(), Id("digest", make_digest_acl_credential("ops", "hunter2")))

    def test_sasl_options(self):
        """SASL DIGEST-MD5 passes user and password to kazoo's sasl_options; GSSAPI the principal."""
        md5 = zkauth.ZooKeeperAuth("sasl", "ops:pw")
        self.assertEqual(md5.kazoo_options(), {"sasl_options": {
            "mechanism": "DIGEST-MD5", "service": "zookeeper", "username": "ops", "password": "pw"}})
        gss = zkauth.ZooKeeperAuth("sasl", "", "GSSAPI", "zookeeper", "metaproxy@EXAMPLE")
        self.assertEqual(gss.kazoo_options()["sasl_options"]["principal"], "metaproxy@EXAMPLE")
        self.assertEqual(gss.acl_id(), Id("sasl", "metaproxy@EXAMPLE"))

    def test_operator_credential_sources(self):
        """--zk-credential-file wins over METAPROXY_ZK_CREDENTIAL, which wins over METAPROXY_ZK_CREDENTIAL_FILE."""
        flag, other = self.write(b"flag:a\n"), self.write(b"file:b\n")
        env = {"METAPROXY_ZK_CREDENTIAL": "env:c", "METAPROXY_ZK_CREDENTIAL_FILE": other}
        self.assertEqual(operator_auth(flag, env).username, "flag")
        self.assertEqual(operator_auth(None, env).username, "env")
        self.assertEqual(operator_auth(None, {"METAPROXY_ZK_CREDENTIAL_FILE": other}).username, "file")
        self.assertIsNone(operator_auth(None, {}))
        with self.assertRaises(CommandError) as e:
            operator_auth(None, {"METAPROXY_ZK_CREDENTIAL": "nocolon-secret"})
        self.assertEqual(e.exception.status, 2)
        self.assertNotIn("nocolon-secret", str(e.exception))


class AclTests(SynchronousTestCase):
    def test_parse_and_format(self):
        """zkCli's scheme:id:perms entries parse (ids may hold colons) and format back."""
        for text in ("world:anyone:r", "digest:ops:abc=:cdrwa", "ip:10.0.0.1:rw", "sasl:ops@R:cdrwa"):
            self.assertEqual(zkauth.format_acl(zkauth.parse_acl(text)), text)
        self.assertEqual(zkauth.parse_acl("digest:ops:h:rw"), ACL(Permissions.READ | Permissions.WRITE,
                                                                Id("digest", "ops:h")))

    def test_bad_entries(self):
        """Entries without perms, with unknown letters, a digest without hash or a bad world id are refused."""
        for text in ("world:anyone", "world:anyone:rx", "digest:ops:r", "world:everyone:r", "ip::r", "r"):
            self.assertRaises(ValueError, zkauth.parse_acl, text)

    def test_world_writable(self):
        """Only world:anyone's create, delete, write and admin make a node world-writable; read does not."""
        self.assertEqual(zkauth.world_writable([ACL(Permissions.ALL, ANYONE_ID_UNSAFE)]), "cdwa")
        self.assertEqual(zkauth.world_writable([ACL(Permissions.READ, ANYONE_ID_UNSAFE)]), "")
        self.assertEqual(zkauth.world_writable([ACL(Permissions.ALL, Id("digest", "ops:h"))]), "")

    def test_creation_acl(self):
        """
        The operator gets everything and the proxies read (with their
        identity, or world:anyone:r without one); without an operator
        credential the node would be open; a configured ACL is used as is.
        """
        ops, proxy = zkauth.ZooKeeperAuth("digest", "ops:a"), zkauth.ZooKeeperAuth("digest", "px:b")
        self.assertEqual(zkauth.creation_acl([], proxy, ops),
                         [ACL(Permissions.ALL, ops.acl_id()), ACL(Permissions.READ, proxy.acl_id())])
        self.assertEqual(zkauth.creation_acl([], None, ops),
                         [ACL(Permissions.ALL, ops.acl_id()), ACL(Permissions.READ, ANYONE_ID_UNSAFE)])
        self.assertEqual(zkauth.creation_acl([], ops, ops), [ACL(Permissions.ALL, ops.acl_id())])
        self.assertEqual(zkauth.world_writable(zkauth.creation_acl([], proxy, None)), "cdwa")
        configured = [zkauth.parse_acl("sasl:ops:cdrwa")]
        self.assertEqual(zkauth.creation_acl(configured, proxy, ops), configured)
        self.assertEqual(describe_acl_entry(ACL(Permissions.READ, proxy.acl_id())), "digest:px:...:r")


class ConfigTests(SynchronousTestCase):
    def parse(self, zk_extra):
        return parse_config(f"zookeeper:\n  address: '127.0.0.1:2181'\n{zk_extra}", "m.yaml")

    def test_credential_file(self):
        """zookeeper.auth with a credential file loads; the config's repr shows no secret."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("proxy:s3cret-value\n")
        config = self.parse(f"  auth: {{credential_file: '{path}'}}\n  acl: ['world:anyone:r']\n")
        self.assertEqual(config.zookeeper.auth.scheme, "digest")
        self.assertEqual(config.zookeeper.acl, ("world:anyone:r",))
        inline = self.parse("  auth: {credential: 'proxy:inline-secret'}\n")
        self.assertNotIn("inline-secret", repr(inline))
        self.assertEqual(zkauth.auth_from_config(inline.zookeeper.auth).username, "proxy")

    def test_problems_are_located(self):
        """A missing file, a bad scheme, both sources, and a bad ACL entry are located errors without secrets."""
        cases = (
            ("  auth: {credential_file: /nonexistent/cred}\n", "m.yaml:3:", "cannot read /nonexistent/cred"),
            ("  auth: {scheme: plain, credential: 'a:b'}\n", "m.yaml:3:", "must be digest or sasl"),
            ("  auth: {credential: 'a:secret-x', credential_file: /x}\n", "m.yaml:3:", "not both"),
            ("  auth: {credential: 'no-colon-secret'}\n", "m.yaml:3:", "expected one line user:password"),
            ("  auth: {}\n", "m.yaml:3:", "give credential_file"),
            ("  acl: ['world:anyone:rx']\n", "m.yaml:3:", "perms must be letters of cdrwa"),
            ("  auth: {scheme: sasl, mechanism: PLAIN, credential: 'a:b'}\n", "m.yaml:3:", "DIGEST-MD5 or GSSAPI"),
        )
        for extra, where, why in cases:
            with self.assertRaises(ConfigError) as e:
                self.parse(extra)
            self.assertIn(where, str(e.exception))
            self.assertIn(why, str(e.exception))
            self.assertNotIn("secret", str(e.exception))
