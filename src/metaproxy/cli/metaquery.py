# -*- test-case-name: metaproxy.test.test_cli -*-
"""
Ask metas (or a metaproxy) for a table's partition configuration, the way
metaproxy itself does: L{metaproxy.backend.cluster.MetaCluster} follows the
leader and hedges within a deadline; the answer is decoded by
L{metaproxy.wire.querycfg}.
"""

from metaproxy.backend.cluster import MetaCluster
from metaproxy.backend.connection import MetaConnection
from metaproxy.wire import querycfg


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
        or failing with L{metaproxy.errors.BackendUnavailable} (no meta
        answered in time) or L{metaproxy.wire.binary.DecodeError}. Every
        connection is closed before it fires.
    """

    kerberos = negotiator = None
    if security is not None and security.secures(cluster_name):
        from metaproxy.security.service import build_security

        kerberos = build_security(security, reactor)
        kerberos.pool.start()
        negotiator = kerberos.negotiator_for(cluster_name)

    def connection(host, port):
        return MetaConnection(reactor, host, port, connect_timeout=timeout, header_version=header_version,
                              negotiator=negotiator)

    cluster = MetaCluster(reactor, meta_addrs, connection_factory=connection)
    d = cluster.query_config(table, [], timeout)
    d.addCallback(lambda response: querycfg.decode_result(response.body))

    def close(result):
        if kerberos is not None:
            kerberos.credentials.stop()
            kerberos.pool.stop()
        return cluster.close().addBoth(lambda _: result)

    return d.addBoth(close)


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
