# -*- test-case-name: metaproxy.test.test_cli -*-
"""
Ask metas (or a metaproxy) for a table's partition configuration, the way
metaproxy itself does: L{metaproxy.backend.cluster.MetaCluster} follows the
leader and hedges within a deadline; the answer is decoded by
L{metaproxy.wire.querycfg}.
"""

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from metaproxy.backend.cluster import MetaCluster
from metaproxy.backend.connection import MetaConnection, default_endpoint
from metaproxy.wire import querycfg


class Refused(Exception):
    """
    Every address asked refused the connection (nothing listens there), so
    waiting out the timeout cannot help; C{str()} names them.
    """


class _RefusalWatch:
    """
    Sees every connection attempt of one query; L{all_refused} fires (with
    a L{Refused}) once each configured address has refused one and none
    has connected.
    """

    def __init__(self, addresses):
        self.addresses = set(addresses)
        self.refused = set()
        self.connected = False
        self.all_refused = defer.Deferred()

    def succeeded(self, result):
        self.connected = True
        return result

    def failed(self, failure, address):
        if failure.check(ConnectionRefusedError) and not self.connected:
            self.refused.add(address)
            if self.addresses <= self.refused and not self.all_refused.called:
                shown = ", ".join(sorted(self.refused))
                self.all_refused.callback(Refused(f"{shown} refused the connection (is anything listening there?)"))
        return failure


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """An endpoint telling a L{_RefusalWatch} how each attempt ended."""

    def __init__(self, inner, address, watch):
        self._inner, self._address, self._watch = inner, address, watch

    def connect(self, factory):
        """Connect as the wrapped endpoint does; the outcome is unchanged."""
        d = self._inner.connect(factory)
        d.addCallbacks(self._watch.succeeded, self._watch.failed, errbackArgs=(self._address,))
        return d


def query_table(reactor, meta_addrs, table, timeout, header_version=0, security=None, cluster_name=""):
    """
    @param meta_addrs: a L{metaproxy.routes.route.MetaAddrs}: a cluster's metas,
        or the one address of a metaproxy.
    @param timeout: seconds for the whole query (connects included).
    @param header_version: the THFT header version to send (0 or 1).
    @param security: the config's L{metaproxy.config.SecurityConfig}, or
        L{None}: with a principal, connections to C{cluster_name} (when it
        is secured) negotiate Kerberos first, as the proxy's do.
    @return: a L{Deferred} firing with the decoded
        L{metaproxy.wire.querycfg.QueryCfgResponse} (whatever its C{err}),
        or failing with L{Refused} (every meta refused the connection: at
        once, not after C{timeout}), L{metaproxy.errors.BackendUnavailable}
        (no meta answered in time) or L{metaproxy.wire.binary.DecodeError}.
        Every connection is closed before it fires.
    """
    watch = _RefusalWatch(meta_addrs.strings())

    kerberos = negotiator = None
    if security is not None and security.secures(cluster_name):
        from metaproxy.security.service import build_security

        kerberos = build_security(security, reactor)
        kerberos.pool.start()
        negotiator = kerberos.negotiator_for(cluster_name)

    def connection(host, port):
        endpoint = _WatchedEndpoint(default_endpoint(reactor, host, port, timeout), f"{host}:{port}", watch)
        return MetaConnection(
            reactor, host, port, connect_timeout=timeout, header_version=header_version, endpoint=endpoint,
            negotiator=negotiator,
        )

    cluster = MetaCluster(reactor, meta_addrs, connection_factory=connection)
    query = cluster.query_config(table, [], timeout)
    query.addCallback(lambda response: querycfg.decode_result(response.body))
    first = defer.Deferred()

    def settle(result):
        if not first.called:
            first.callback(result)

    query.addBoth(settle)
    watch.all_refused.addCallback(lambda refused: settle(Failure(refused)))

    def close(result):
        if kerberos is not None:
            kerberos.credentials.stop()
            kerberos.pool.stop()
        return cluster.close().addBoth(lambda _: result)

    return first.addBoth(close)


def address(value, host_port=None):
    """
    @param value: an rpc_address value.
    @param host_port: the matching C{hp_*} L{querycfg.HostPort}, if sent.
    @return: C{"ip:port"}, else the host_port's C{"host:port"}, else L{None}.
    """
    ip_port = querycfg.address_host_port(value)
    if ip_port is not None:
        return f"{ip_port[0]}:{ip_port[1]}"
    if host_port is not None and host_port.host:
        return f"{host_port.host}:{host_port.port}"
    return None


def partition_rows(response):
    """
    @return: one L{dict} per partition of a
        L{querycfg.QueryCfgResponse}: C{pidx}, C{ballot}, C{primary}
        (C{"ip:port"} or L{None}) and C{secondaries} (a list).
    """
    rows = []
    for p in response.partitions:
        hp_secondaries = p.hp_secondaries or ()
        secondaries = [
            address(s, hp_secondaries[i] if i < len(hp_secondaries) else None) for i, s in enumerate(p.secondaries)
        ]
        rows.append(
            {
                "pidx": p.partition_index,
                "ballot": p.ballot,
                "primary": address(p.primary, p.hp_primary),
                "secondaries": [s for s in secondaries if s is not None],
            }
        )
    return rows


def as_json(response):
    """@return: the JSON-ready L{dict} C{metaproxy resolve --json} prints."""
    return {
        "err": response.err,
        "app_id": response.app_id,
        "partition_count": response.partition_count,
        "is_stateful": response.is_stateful,
        "partitions": partition_rows(response),
    }


def health_problem(response):
    """
    @return: why a response does not show a servable table (an error, a
        partition list that does not match the count, a partition without a
        primary), or L{None}.
    """
    if response.err != "ERR_OK":
        return response.err
    rows = partition_rows(response)
    if response.partition_count < 1 or len(rows) != response.partition_count:
        return f"{len(rows)} partitions listed for a partition count of {response.partition_count}"
    missing = [r["pidx"] for r in rows if r["primary"] is None]
    if missing:
        shown = ", ".join(str(i) for i in missing[:10])
        return f"{len(missing)} partitions without a primary ({shown}{', ...' if len(missing) > 10 else ''})"
    return None
