# -*- test-case-name: metaproxy.test.test_zkacl -*-
"""
What C{metaproxy check} warns about security: a route tree anyone who
reaches ZooKeeper can change, secrets kept where others can read them,
admin passwords sent in clear text. Warnings, not errors: the config
still loads and the exit status stays 0.
"""

from metaproxy.cli.common import CommandError
from metaproxy.routes import zkauth


def config_warnings(config):
    """@return: the warnings a loaded config gives without asking ZooKeeper."""
    out = []
    zk = config.zookeeper
    auth = zk.auth if zk is not None else None
    if auth is not None and auth.credential is not None:
        out.append("zookeeper.auth.credential holds the secret in the config file; "
                   "prefer zookeeper.auth.credential_file (mode 0600)")
    if auth is not None and auth.credential_file is not None:
        exposed = zkauth.file_exposed(auth.credential_file)
        if exposed:
            out.append(f"zookeeper.auth.credential_file: {exposed}")
    admin = config.admin
    if admin.basic_auth_users and not admin.listen.startswith("ssl:") and "interface=127." not in admin.listen:
        out.append("admin.basic_auth_users without TLS on a non-loopback admin.listen: passwords cross the "
                   "network in clear text (use an ssl: endpoint)")
    return out


def tree_warnings(config, timeout):
    """
    @return: the warnings about the route tree's ACL (connecting to
        ZooKeeper for at most C{timeout} seconds per step), or one saying
        why it could not be checked.
    """
    from metaproxy.cli.zkstore import RouteStore, tree_warnings as warnings_of

    if config.zookeeper is None:
        return []
    try:
        with RouteStore(config.zookeeper, timeout) as store:
            return warnings_of(store)
    except CommandError as e:
        return [f"could not check the route tree's ACL: {e}"]
