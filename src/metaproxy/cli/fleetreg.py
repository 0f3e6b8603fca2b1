# -*- test-case-name: metaproxy.test.test_fleet -*-
"""
The fleet as the CLI sees it: the registration nodes under
C{zookeeper.fleet_path} (written by L{metaproxy.ops.fleet}), read with the
CLI's kazoo session, and each instance's admin C{/routes?table=}, asked in
parallel with a bound per instance (the CLI is short-lived and blocks).
"""

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import attrs
from kazoo.exceptions import NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from metaproxy.cli.common import CommandError

#: The most bytes read from one admin answer.
MAX_ANSWER = 4 * 1024 * 1024
#: Instances asked at once.
MAX_PARALLEL = 32


@attrs.frozen
class Instance:
    """
    One registered instance.

    @ivar name: its node's name.
    @ivar doc: the node's JSON object (address, admin, version, started,
        ready, routes_cached...); C{{}} when unreadable.
    """

    name: str
    doc: dict

    @property
    def address(self):
        """@return: the advertised client address (or the node name)."""
        return str(self.doc.get("address") or self.name)

    @property
    def admin(self):
        """@return: the advertised admin address, or L{None}."""
        return self.doc.get("admin")


def read_instances(client, fleet_path, timeout):
    """
    @param client: a started L{kazoo.client.KazooClient}.
    @return: the registered L{Instance}s, by address; none when the fleet
        node does not exist yet.
    @raise CommandError: ZooKeeper did not answer within C{timeout}.
    """
    if not fleet_path:
        return []
    try:
        names = client.get_children_async(fleet_path).get(timeout=timeout)
    except NoNodeError:
        return []
    except KazooTimeoutError:
        raise CommandError(f"ZooKeeper did not list {fleet_path} within {timeout:g}s") from None
    pending = [(name, client.get_async(f"{fleet_path}/{name}")) for name in names]
    out = []
    for name, result in pending:
        try:
            data, _ = result.get(timeout=timeout)
        except NoNodeError:
            continue  # gone while listing
        except KazooTimeoutError:
            raise CommandError(f"ZooKeeper did not answer for {fleet_path}/{name} within {timeout:g}s") from None
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            doc = {}
        out.append(Instance(name, doc if isinstance(doc, dict) else {}))
    return sorted(out, key=lambda i: (i.address, i.doc.get("started") or 0, i.name))


@attrs.frozen
class Probe:
    """
    What one instance's admin said about a table.

    @ivar status: C{"ok"} (C{entry} is the table's C{/routes} entry),
        C{"not-cached"} (404), or C{"error"} (C{why} says what).
    @ivar refused: the connection was refused (nothing listens there).
    """

    status: str
    entry: object = None
    why: str = ""
    refused: bool = False


def probe_routes(admin, table, timeout):
    """
    Ask one admin listener for C{/routes?table=TABLE}.

    @return: a L{Probe}; never raises.
    """
    if not admin:
        return Probe("error", why="registered without an admin address")
    url = f"http://{admin}/routes?" + urllib.parse.urlencode({"table": table})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            body = answer.read(MAX_ANSWER)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return Probe("not-cached")
        return Probe("error", why=f"admin answered HTTP {e.code}")
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            return Probe("error", why="connection refused", refused=True)
        if isinstance(reason, socket.timeout):
            return Probe("error", why=f"no answer within {timeout:g}s")
        return Probe("error", why=str(reason))
    except socket.timeout:
        return Probe("error", why=f"no answer within {timeout:g}s")
    except (OSError, ValueError) as e:
        return Probe("error", why=f"{type(e).__name__}: {e}")
    try:
        doc = json.loads(body.decode("utf-8"))
        entries = [e for e in doc.get("routes", []) if e.get("table") == table]
    except (UnicodeDecodeError, ValueError, AttributeError):
        return Probe("error", why="admin answered something that is not /routes JSON")
    if not entries:
        return Probe("not-cached")
    return Probe("ok", entry=entries[0])


def probe_all(instances, table, timeout):
    """@return: C{{instance name: Probe}}, asked in parallel (at most L{MAX_PARALLEL} at once)."""
    if not instances:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(instances))) as pool:
        results = pool.map(lambda i: probe_routes(i.admin, table, timeout), instances)
        return {i.name: p for i, p in zip(instances, results)}


def _ips(host):
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return set()


def loop_problem(instances, route):
    """
    @param route: the L{metaproxy.routes.route.Route} about to be written.
    @return: why the route would loop through a registered instance (one
        of its meta addresses is an instance's client address, by name or
        by resolved address), or L{None}.
    """
    for meta in route.meta_addrs.strings():
        host, _, port = meta.rpartition(":")
        for instance in instances:
            ihost, _, iport = instance.address.rpartition(":")
            if iport != port:
                continue
            ihost = ihost.strip("[]")
            if ihost == host or (_ips(host) & _ips(ihost)):
                return (f"meta address {meta} is the metaproxy instance {instance.address} "
                        f"(registered as {instance.name}): a route through a proxy would loop")
    return None
