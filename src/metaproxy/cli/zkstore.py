# -*- test-case-name: metaproxy.test.test_cli_routes -*-
"""
Route nodes in ZooKeeper, read and written synchronously (the CLI is
short-lived and does nothing else meanwhile), with kazoo as metaproxy uses
it. Node paths and contents are those of L{metaproxy.routes.zookeeper} and
L{metaproxy.routes.route.Route}. Every write is a compare-and-set on the version
that was read, so that a concurrent writer is never clobbered.
"""

import datetime
import logging

import attrs
from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError, NotEmptyError
from kazoo.handlers.threading import KazooTimeoutError

from metaproxy.cli.common import CommandError
from metaproxy.errors import InvalidRoute
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

    def __init__(self, zk_config, timeout, client=None):
        """
        @param zk_config: the config's L{metaproxy.config.ZooKeeperConfig}.
        @param timeout: seconds to connect and for each request.
        """
        self.root = zk_config.root
        self.fleet_path = getattr(zk_config, "fleet_path", "")
        self.hosts = ",".join(zk_config.address)
        self.timeout = timeout
        self.client = client or KazooClient(
            hosts=self.hosts,
            timeout=zk_config.timeout / 1000.0,
            connection_retry={"max_tries": -1, "max_delay": 1.0},
            logger=quiet_logger(),
        )

    def __enter__(self):
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
            self._conditional(self.client.create_async(path, data, makepath=True), path, version, "written")
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
            self._wait(async_result, f"for {path}")
        except NodeExistsError:
            raise Conflict(f"{path} was created by someone else since it was read; nothing {done}") from None
        except BadVersionError:
            raise Conflict(f"{path} changed since it was read (version {version}); nothing {done}") from None
        except NoNodeError:
            raise Conflict(f"{path} was deleted by someone else since it was read; nothing {done}") from None
        except NotEmptyError:
            raise CommandError(f"{path} has child nodes, so it is no route node; nothing {done}") from None
        except KazooException as e:
            raise CommandError(
                f"ZooKeeper failed on {path} ({type(e).__name__}); the outcome is unknown: check with routes get"
            ) from None
