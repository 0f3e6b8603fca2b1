# -*- test-case-name: metaproxy.test.test_cli_routes -*-
"""
Route nodes in ZooKeeper, read and written synchronously (the CLI is
short-lived and does nothing else meanwhile), with kazoo as metaproxy uses
it. Node paths and contents are those of L{metaproxy.routes.zookeeper} and
L{metaproxy.routes.route.Route}. Every write is a compare-and-set on the version
that was read, so that a concurrent writer is never clobbered.
"""

import datetime
import errno
import logging
import socket

import attrs
from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError, BadVersionError, KazooException, NoAuthError, NodeExistsError, NoNodeError, NotEmptyError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.hosts import collect_hosts

from metaproxy.cli.common import CommandError
from metaproxy.errors import InvalidRoute
from metaproxy.routes import zkauth
from metaproxy.routes.route import Route
from metaproxy.routes.zookeeper import valid_table_name


def quiet_logger():
    """
    @return: a stdlib logger that drops everything, for kazoo: its
        reconnect chatter would bury the command's own one-line messages
        (which say what failed).
    """
    logger = logging.getLogger("metaproxy.cli.kazoo")
    if logger.propagate:
        logger.propagate = False
        logger.addHandler(logging.NullHandler())
    return logger


def all_refused(hosts, timeout):
    """
    Try a TCP connection to each ZooKeeper server in C{hosts} (as kazoo
    would, one after the other, each bounded by C{timeout}).

    @return: a message naming every server when each one refused the
        connection (nothing listens there: waiting cannot help), else
        L{None} (one accepted, or one did not answer: then kazoo waits).
    """
    try:
        servers, _chroot = collect_hosts(hosts)
    except ValueError:
        return None
    refusals = []
    for host, port in servers:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return None
        except OSError as e:
            if e.errno != errno.ECONNREFUSED:
                return None
            refusals.append(f"{host}:{port}")
    if not refusals:
        return None
    return f"ZooKeeper refused the connection at {', '.join(refusals)}: is ZooKeeper running there?"


class Conflict(CommandError):
    """The node changed since it was read: nothing was written."""


@attrs.frozen
class RouteNode:
    """
    One table's node as read.

    @ivar route: the L{Route}, or L{None} when the data is not a route.
    @ivar error: why the data is not a route, or L{None}.
    @ivar version: the node's data version (for the compare-and-set).
    @ivar mtime: when it was last written, as an ISO 8601 UTC string.
    @ivar mzxid: the transaction that last wrote it (what an instance's
        C{/routes} reports once it serves this version).
    """

    table: str
    path: str
    route: object
    error: object
    version: int
    mtime: str
    mzxid: object = None

    def as_json(self):
        """@return: the JSON-ready L{dict} C{routes list/get --json} print."""
        route = self.route
        out = {
            "table": self.table,
            "cluster_name": route.cluster_name if route else None,
            "meta_addrs": str(route.meta_addrs) if route else None,
            "version": self.version,
            "mtime": self.mtime,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


def _mtime(stat):
    stamp = datetime.datetime.fromtimestamp(stat.mtime / 1000.0, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def check_table(table):
    """@raise CommandError: if C{table} cannot be a table's node name."""
    if not valid_table_name(table):
        raise CommandError(f"{table!r} is not a valid table name", 2)


class RouteStore:
    """
    The route nodes under one ZooKeeper root, through one kazoo session.

    Use as a context manager: it connects on entry (or raises
    L{CommandError} when ZooKeeper does not answer within C{timeout}) and
    closes the session on exit.
    """

    def __init__(self, zk_config, timeout, client=None, operator=None):
        """
        @param zk_config: the config's L{metaproxy.config.ZooKeeperConfig}.
        @param timeout: seconds to connect and for each request.
        @param operator: the operator's L{metaproxy.routes.zkauth.ZooKeeperAuth}
            (the session presents it instead of C{zookeeper.auth}, and it
            gets every permission on what is created), or L{None}.
        @raise CommandError: C{zookeeper.auth} cannot be used.
        """
        self.root = zk_config.root
        self.fleet_path = getattr(zk_config, "fleet_path", "")
        self.hosts = ",".join(zk_config.address)
        self.timeout = timeout
        try:
            proxy = zkauth.auth_from_config(zk_config.auth)
        except zkauth.CredentialError as e:
            raise CommandError(f"zookeeper.auth: {e}") from None
        self.auth = operator or proxy
        self.operator = operator
        #: the ACL of the nodes this store creates (see L{zkauth.creation_acl})
        self.create_acl = zkauth.creation_acl([zkauth.parse_acl(a) for a in zk_config.acl], proxy, operator)
        self.client = client or KazooClient(
            hosts=self.hosts,
            timeout=zk_config.timeout / 1000.0,
            connection_retry={"max_tries": -1, "max_delay": 1.0},
            logger=quiet_logger(),
            **(self.auth.kazoo_options() if self.auth is not None else {}),
        )

    def __enter__(self):
        refused = all_refused(self.hosts, min(1.0, self.timeout / 4))
        if refused is not None:
            self._close()
            raise CommandError(refused)
        try:
            self.client.start(timeout=self.timeout)
        except (KazooTimeoutError, KazooException) as e:
            self._close()
            raise CommandError(f"ZooKeeper {self.hosts} did not answer within {self.timeout:g}s ({e})") from None
        return self

    def __exit__(self, *exc_info):
        self._close()
        return False

    def _close(self):
        try:
            self.client.stop()
            self.client.close()
        except Exception:
            pass

    def path(self, table):
        """@return: the node of C{table}."""
        return f"{self.root}/{table}"

    def _wait(self, async_result, what):
        try:
            return async_result.get(timeout=self.timeout)
        except KazooTimeoutError:
            raise CommandError(f"ZooKeeper {self.hosts} did not answer {what} within {self.timeout:g}s") from None
        except (NoAuthError, AuthFailedError) as e:
            raise CommandError(f"ZooKeeper refused to answer {what}: {self._refusal(e)}") from None

    def _refusal(self, exc):
        """@return: why ZooKeeper refused, and what to give, naming no secret."""
        who = f"as {self.auth.describe()}" if self.auth is not None else "without a credential"
        if isinstance(exc, AuthFailedError):
            return f"it refused the credential ({who}; AuthFailed)"
        return (f"the node's ACL does not allow it {who} (NoAuth); give operator credentials with "
                f"--zk-credential-file FILE or {OPERATOR_ENV}")

    def _node(self, table, data, stat):
        try:
            route, error = Route.from_json(data), None
        except InvalidRoute as e:
            route, error = None, str(e)
        return RouteNode(table, self.path(table), route, error, stat.version, _mtime(stat), stat.mzxid)

    def get(self, table):
        """@return: the table's L{RouteNode}, or L{None} when it has no node."""
        check_table(table)
        try:
            data, stat = self._wait(self.client.get_async(self.path(table)), f"for {self.path(table)}")
        except NoNodeError:
            return None
        return self._node(table, data, stat)

    def names(self):
        """@return: the names of the tables under the root (none when the root does not exist)."""
        try:
            return [t for t in self._wait(self.client.get_children_async(self.root), f"listing {self.root}")
                    if valid_table_name(t)]
        except NoNodeError:
            return []

    def list(self):
        """
        @return: the L{RouteNode} of every table under the root, by name.
        @raise CommandError: when the root does not exist.
        """
        try:
            tables = sorted(self._wait(self.client.get_children_async(self.root), f"listing {self.root}"))
        except NoNodeError:
            raise CommandError(f"ZooKeeper root {self.root} does not exist (check zookeeper.root)") from None
        pending = [(t, self.client.get_async(self.path(t))) for t in tables if valid_table_name(t)]
        nodes = []
        for table, result in pending:
            try:
                data, stat = self._wait(result, f"for {self.path(table)}")
            except NoNodeError:
                continue  # deleted while listing
            nodes.append(self._node(table, data, stat))
        return nodes

    def write(self, table, route, version):
        """
        Write C{route} as C{table}'s node if it is still at C{version}.

        @param version: the version read, or L{None} when there was no node
            (it is created, with the root if needed).
        @return: the new L{RouteNode}.
        @raise Conflict: the node changed (or appeared) since it was read.
        """
        path = self.path(table)
        data = route.to_json()
        if version is None:
            self._conditional(
                self.client.create_async(path, data, acl=self.create_acl, makepath=True), path, version, "written"
            )
        else:
            self._conditional(self.client.set_async(path, data, version=version), path, version, "written")
        return self.get(table)

    def delete(self, table, version):
        """
        Delete C{table}'s node if it is still at C{version}.

        @raise Conflict: the node changed or went away since it was read.
        """
        path = self.path(table)
        self._conditional(self.client.delete_async(path, version=version), path, version, "deleted")

    def _conditional(self, async_result, path, version, done):
        """
        Wait for a write made on condition of C{version}.

        @raise Conflict: the node changed, appeared or went away meanwhile.
        @raise CommandError: ZooKeeper refused it for another reason (or the
            connection was lost, when the outcome is unknown).
        """
        try:
            async_result.get(timeout=self.timeout)
        except KazooTimeoutError:
            raise CommandError(
                f"ZooKeeper {self.hosts} did not answer for {path} within {self.timeout:g}s; "
                "the outcome is unknown: check with routes get"
            ) from None
        except NodeExistsError:
            raise Conflict(f"{path} was created by someone else since it was read; nothing {done}") from None
        except BadVersionError:
            raise Conflict(f"{path} changed since it was read (version {version}); nothing {done}") from None
        except NoNodeError:
            raise Conflict(f"{path} was deleted by someone else since it was read; nothing {done}") from None
        except NotEmptyError:
            raise CommandError(f"{path} has child nodes, so it is no route node; nothing {done}") from None
        except (NoAuthError, AuthFailedError) as e:
            raise CommandError(f"ZooKeeper refused to change {path}: {self._refusal(e)}; nothing {done}") from None
        except KazooException as e:
            raise CommandError(
                f"ZooKeeper failed on {path} ({type(e).__name__}); the outcome is unknown: check with routes get"
            ) from None


    # -- ACLs

    def acl(self, table=None):
        """@return: the ACL (kazoo L{ACL}s) of C{table}'s node (the root's for L{None}), or C{[]} when it has none."""
        path = self.root if table is None else self.path(table)
        try:
            acls, _ = self._wait(self.client.get_acls_async(path), f"the ACL of {path}")
        except NoNodeError:
            return []
        return acls

    def creation_problem(self):
        """@return: why creating a node with L{create_acl} is unsafe (it is world-writable), or L{None}."""
        letters = zkauth.world_writable(self.create_acl)
        if not letters:
            return None
        why = "no operator credential was given" if self.operator is None else "zookeeper.acl says so"
        return (f"the new node would be world-writable (world:anyone:{letters}: anyone who reaches ZooKeeper "
                f"could change the route) because {why}")

    def describe_create_acl(self):
        """@return: L{create_acl} in zkCli's notation, digest hashes left out."""
        return ", ".join(describe_acl_entry(a) for a in self.create_acl)

    def world_writable_nodes(self, limit=10000):
        """
        @return: C{(root letters, {table: letters})}: the permissions
            C{world:anyone} holds that change routes, on the root and on
            each table node that has some (at most C{limit} nodes read).
        @raise CommandError: when the root does not exist.
        """
        try:
            acls, _ = self._wait(self.client.get_acls_async(self.root), f"the ACL of {self.root}")
            tables = sorted(self._wait(self.client.get_children_async(self.root), f"listing {self.root}"))
        except NoNodeError:
            raise CommandError(f"ZooKeeper root {self.root} does not exist (check zookeeper.root)") from None
        pending = [(t, self.client.get_acls_async(self.path(t))) for t in tables[:limit]]
        open_nodes = {}
        for table, result in pending:
            try:
                node_acls, _ = self._wait(result, f"the ACL of {self.path(table)}")
            except NoNodeError:
                continue
            letters = zkauth.world_writable(node_acls)
            if letters:
                open_nodes[table] = letters
        return zkauth.world_writable(acls), open_nodes


#: The environment variable that may hold the operator's C{user:password}.
OPERATOR_ENV = "METAPROXY_ZK_CREDENTIAL"


def describe_acl_entry(acl):
    """@return: one ACL entry as C{scheme:id:perms}, a digest's hash left out (C{digest:user:...:r})."""
    ident = acl.id.id
    if acl.id.scheme == zkauth.DIGEST:
        ident = ident.split(":", 1)[0] + ":..."
    return f"{acl.id.scheme}:{ident}:{zkauth.perms_text(acl.perms)}"


def tree_warnings(store):
    """
    @param store: a connected L{RouteStore}.
    @return: one line for each way the route tree can be changed by anyone
        who reaches ZooKeeper (empty when it cannot).
    """
    root_letters, nodes = store.world_writable_nodes()
    out = []
    if root_letters:
        out.append(f"{store.root} is world-writable (world:anyone:{root_letters}): anyone who reaches ZooKeeper "
                   "can create or delete routes; see docs/security.rst")
    if nodes:
        names = ", ".join(sorted(nodes)[:10]) + (f" and {len(nodes) - 10} more" if len(nodes) > 10 else "")
        out.append(f"{len(nodes)} route node(s) under {store.root} are world-writable (world:anyone has "
                   f"{''.join(c for c in 'cdrwa' if any(c in v for v in nodes.values()))}): {names}; anyone who reaches ZooKeeper "
                   "can move these tables")
    return out


def operator_auth(credential_file, environ):
    """
    The operator's credential for C{metaproxy routes}: C{--zk-credential-file
    FILE}, else the variable L{OPERATOR_ENV} (C{user:password}), else the
    variable C{METAPROXY_ZK_CREDENTIAL_FILE}.

    @return: a digest L{metaproxy.routes.zkauth.ZooKeeperAuth}, or L{None}
        when none is given.
    @raise CommandError: the credential given cannot be used.
    """
    try:
        if credential_file:
            return zkauth.digest_auth(zkauth.read_secret(credential_file), "--zk-credential-file")
        if environ.get(OPERATOR_ENV):
            return zkauth.digest_auth(environ[OPERATOR_ENV], OPERATOR_ENV)
        if environ.get(OPERATOR_ENV + "_FILE"):
            path = environ[OPERATOR_ENV + "_FILE"]
            return zkauth.digest_auth(zkauth.read_secret(path), OPERATOR_ENV + "_FILE")
    except zkauth.CredentialError as e:
        raise CommandError(f"operator credential: {e}", 2) from None
    return None
