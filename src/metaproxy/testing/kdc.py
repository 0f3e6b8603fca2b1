# -*- test-case-name: metaproxy.test.test_security_kerberos -*-
"""
A real MIT Kerberos KDC for tests: Debian's C{krb5kdc}, a throw-away realm
on 127.0.0.1 at a free port, every file in a temporary directory.

The realm's C{krb5.conf} and C{kdc.conf} are pointed to by C{KRB5_CONFIG}
and C{KRB5_KDC_PROFILE}; L{KDC.environ} gives both (and is what
L{use_realm} installs in this process, since the GSSAPI library reads
C{KRB5_CONFIG} whenever it makes a context). The database is made with
C{kdb5_util create -s}; principals and keytabs with C{kadmin.local}.
Clients talk TCP only (C{udp_preference_limit = 1}); the KDC binds its
port for UDP as well, so the port is chosen free for both.

trial runs no class fixtures, so L{shared_kdc} is a lazily started
per-process KDC stopped at exit; each test makes principals of its own.
"""

import atexit
import itertools
import os
import shutil
import socket
import subprocess
import tempfile

from twisted.trial.unittest import SkipTest

from metaproxy.testing.net import free_port, stop_process, wait_for_port

SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
REALM = "METAPROXY.TEST"
_KRB5_CONF = """\
[libdefaults]
    default_realm = {realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
    ticket_lifetime = 1h
    forwardable = false
    default_ccache_name = FILE:{dir}/ccache-default

[realms]
    {realm} = {{
        kdc = 127.0.0.1:{port}
    }}

[domain_realm]
    localhost = {realm}
    .test = {realm}
"""
_KDC_CONF = """\
[kdcdefaults]
    kdc_listen = 127.0.0.1:{port}
    kdc_tcp_listen = 127.0.0.1:{port}

[realms]
    {realm} = {{
        database_name = {dir}/principal
        key_stash_file = {dir}/stash
        acl_file = {dir}/kadm5.acl
        max_life = 1h
        max_renewable_life = 0
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }}

[logging]
    kdc = FILE:{dir}/kdc.log
"""


def _which(name):
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    return None


def _free_tcp_and_udp_port():
    """@return: a port free on 127.0.0.1 for TCP and for UDP a moment ago (krb5kdc binds both)."""
    for _ in range(50):
        port = free_port()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            probe.close()
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1")


def available():
    """@return: a reason string when no KDC can be run here, else L{None}."""
    missing = [n for n in ("krb5kdc", "kdb5_util", "kadmin.local") if _which(n) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install krb5-kdc krb5-admin-server)"
    try:
        import gssapi  # noqa: F401
    except ImportError as e:
        return f"the gssapi binding is not importable here ({e}); pip install gssapi"
    return None


class KDC:
    """
    One running C{krb5kdc} in its own realm and directory.

    @ivar realm: the realm name.
    @ivar port: the TCP port it listens on (127.0.0.1).
    @ivar dir: the directory holding its database, configs and keytabs.
    """

    def __init__(self, realm=REALM, max_life="1h"):
        reason = available()
        if reason is not None:
            raise SkipTest(reason)
        self.realm = realm
        self.dir = tempfile.mkdtemp(prefix="metaproxy-kdc-")
        self.port = _free_tcp_and_udp_port()
        self._names = itertools.count(1)
        with open(os.path.join(self.dir, "krb5.conf"), "w") as f:
            f.write(_KRB5_CONF.format(realm=realm, dir=self.dir, port=self.port))
        with open(os.path.join(self.dir, "kdc.conf"), "w") as f:
            f.write(_KDC_CONF.format(realm=realm, dir=self.dir, port=self.port).replace("max_life = 1h",
                                                                                     f"max_life = {max_life}"))
        with open(os.path.join(self.dir, "kadm5.acl"), "w") as f:
            f.write("")
        self._run("kdb5_util", "create", "-s", "-r", realm, "-P", "metaproxy-test-master")
        self._proc = subprocess.Popen(
            [_which("krb5kdc"), "-n", "-r", realm, "-P", os.path.join(self.dir, "kdc.pid")],
            env=self.environ(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.port, self._proc, timeout=30.0)
        except RuntimeError:
            err = self._proc.stderr.read().decode(errors="replace") if self._proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"krb5kdc did not start: {err.strip()}") from None

    def environ(self):
        """@return: a copy of this process's environment pointing at this realm."""
        env = dict(os.environ)
        env["KRB5_CONFIG"] = os.path.join(self.dir, "krb5.conf")
        env["KRB5_KDC_PROFILE"] = os.path.join(self.dir, "kdc.conf")
        env["KRB5CCNAME"] = "FILE:" + os.path.join(self.dir, "ccache-default")
        env["KRB5RCACHETYPE"] = "none"
        return env

    def _run(self, tool, *args):
        done = subprocess.run([_which(tool), *args], env=self.environ(), capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode(errors="replace")

    def kadmin(self, query):
        """Run one C{kadmin.local} query in this realm; @return: its output."""
        return self._run("kadmin.local", "-r", self.realm, "-q", query)

    def add_principal(self, name, keytab=None, max_life=None):
        """
        Create principal C{name} (C{@realm} added when missing) with a random
        key, and export its key to a keytab.

        @param keytab: the keytab path; a new file in L{dir} when L{None}.
        @param max_life: the principal's longest ticket life (kadmin syntax,
            e.g. C{"20 seconds"}), or L{None} for the realm's.
        @return: C{(principal, keytab path)}.
        """
        principal = name if "@" in name else f"{name}@{self.realm}"
        life = f' -maxlife "{max_life}"' if max_life else ""
        self.kadmin(f"addprinc -randkey{life} {principal}")
        if keytab is None:
            keytab = os.path.join(self.dir, f"{next(self._names)}-{name.replace('/', '_')}.keytab")
        self.kadmin(f"ktadd -k {keytab} {principal}")
        return principal, keytab

    def unique(self, stem):
        """@return: C{stem} with a number this KDC has not given before (principal names per test)."""
        return f"{stem}{next(self._names)}"

    def stop(self):
        """Stop the KDC (SIGTERM, then SIGKILL) and remove its directory."""
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is not None:
            stop_process(proc, timeout=5.0)
            if proc.stderr is not None:
                proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def use_realm(testcase, kdc):
    """
    Point this process's Kerberos library at C{kdc}'s realm for the length
    of C{testcase} (restored in a cleanup).
    """
    keys = ("KRB5_CONFIG", "KRB5_KDC_PROFILE", "KRB5CCNAME", "KRB5RCACHETYPE")
    saved = {k: os.environ.get(k) for k in keys}
    env = kdc.environ()
    for k in keys:
        os.environ[k] = env[k]

    def restore():
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    testcase.addCleanup(restore)


_shared = []


def shared_kdc():
    """
    @return: this process's shared L{KDC}, started on first use and stopped
        at exit.
    @raise SkipTest: when the KDC binaries or the binding are missing.
    """
    if not _shared:
        kdc = KDC()
        atexit.register(kdc.stop)
        _shared.append(kdc)
    return _shared[0]
