# -*- test-case-name: metaproxy.test.test_sim -*-
"""
Simulated Pegasus meta servers: a cluster of N metas on their own ports.

One meta is the leader and answers query_cfg from the cluster's
L{metaproxy.sim.model.SimModel}; the others answer C{ERR_FORWARD_TO_OTHERS}
with the leader's address in C{partitions[0].primary} (an empty partition
list while the leader is unknown), as C{pegasus-protocol.md} section 4.4
describes. Faults are switched on the L{SimulatedCluster}: leader change, a
meta down (really not listening, its connections dropped), slow answers,
C{ERR_SERVICE_NOT_ACTIVE} from the leader, and silence.

C{RPC_CM_CLUSTER_INFO} is answered like a real meta: the leader with
C{ERR_OK} and the cluster's facts (C{cluster_name}, C{meta_servers},
C{primary_meta_server}, ...), a follower with C{ERR_FORWARD_TO_OTHERS}
(L{metaproxy.wire.clusterinfo}).

The metas are served by metaproxy's own L{PegasusServerFactory} behind an
L{RpcDispatcher}, so they frame, negotiate and reject unknown RPCs the way
the proxy does.
"""

from typing import Optional
import attrs
from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory

from metaproxy.frontend.dispatch import RpcDispatcher
from metaproxy.routes.route import is_ip_literal
from metaproxy.frontend.server import PegasusServerFactory
from metaproxy.sim.model import DEFAULT_REPLICAS, SimModel
from metaproxy.wire import clusterinfo, codes, querycfg
from metaproxy.wire.frame import Reply

log = Logger()

_NOT_ACTIVE = Reply(querycfg.error_result(codes.ERR_SERVICE_NOT_ACTIVE))
_LEADER_UNKNOWN = Reply(querycfg.forward_result(None))
_ARGS_CACHE_SIZE = 4096


def parse_sim_address(text):
    """
    Parse a simulated meta's C{"ip:port"}; port 0 means any free port.

    @return: C{(ip, port)}.
    @raise ValueError: if the host is not an IPv4 literal or the port is bad.
    """
    host, _, port = text.strip().rpartition(":")
    if not is_ip_literal(host):
        raise ValueError(f"simulated meta {text!r}: use IPv4-address:port")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"simulated meta {text!r}: bad port")
    return host, int(port)


@attrs.define(eq=False)
class SimulatedMeta:
    """
    One simulated meta server.

    @ivar cluster: the L{SimulatedCluster} it belongs to.
    @ivar index: its position in the cluster.
    @ivar host: the IPv4 address it listens on (and names itself by).
    @ivar port: the port; 0 until first started means "any free port", after
        which the bound port is kept so a restart comes back on it.
    @ivar factory: the server factory; it tracks its connections in
        C{factory.protocols} (tests may C{buildProtocol} on it directly).
    @ivar delay: seconds this meta waits before answering, or L{None} to use
        the cluster's delay.
    @ivar silent: L{True} to never answer (overrides the cluster's switch).
    @ivar answered: how many query_cfg requests it answered.
    """

    cluster: object
    index: int
    host: str
    port: int
    factory: object = attrs.field(init=False, default=None)
    delay: Optional[float] = None
    silent: Optional[bool] = None
    answered: int = attrs.field(init=False, default=0)
    handler: object = attrs.field(init=False, default=None)
    _listening: object = attrs.field(init=False, default=None)
    _forward: Optional[Reply] = attrs.field(init=False, default=None)
    _forward_to: object = attrs.field(init=False, default=None)
    _last_body: Optional[bytes] = attrs.field(init=False, default=None)
    _last_reply: Optional[Reply] = attrs.field(init=False, default=None)

    def __attrs_post_init__(self):
        dispatcher = RpcDispatcher(
            {querycfg.QUERY_CFG: self.handle_query, clusterinfo.CLUSTER_INFO: self.handle_cluster_info}
        )
        self.handler = self.cluster.secured(dispatcher)
        inner = PegasusServerFactory(self.handler, self.cluster.reactor)
        self.factory = WrappingFactory(inner)
        self.factory.noisy = False  # no "Starting factory <repr>" line per meta

    @property
    def address(self):
        """@return: C{"host:port"}."""
        return f"{self.host}:{self.port}"

    @property
    def running(self):
        """@return: L{True} while listening."""
        return self._listening is not None

    def rpc_address(self):
        """@return: this meta's rpc_address value, as followers name the leader."""
        return querycfg.rpc_address(self.host, self.port)

    def start(self):
        """Listen (synchronously); a no-op when already listening."""
        if self._listening is not None:
            return
        self._listening = self.cluster.reactor.listenTCP(self.port, self.factory, interface=self.host)
        if self.port == 0:
            self.port = self._listening.getHost().port

    def stop(self):
        """
        Stop listening and drop every connection.

        @return: a L{Deferred} firing once the port is closed.
        """
        listening, self._listening = self._listening, None
        for proto in list(self.factory.protocols):
            transport = proto.transport
            if transport is not None:
                transport.abortConnection()
        if listening is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listening.stopListening)

    def handle_query(self, request, connection):
        """
        Answer one query_cfg as this meta would in the cluster's state.

        @return: a L{Reply}, or a L{Deferred} of one when answers are slow,
            or a L{Deferred} that never fires when the meta is silent.
        """
        cluster = self.cluster
        silent = cluster.silent if self.silent is None else self.silent
        if silent:
            return defer.Deferred()
        reply = self._reply(request)
        self.answered += 1
        delay = cluster.delay if self.delay is None else self.delay
        if delay > 0:
            return task.deferLater(cluster.reactor, delay, lambda: reply)
        return reply

    def handle_cluster_info(self, request, connection):
        """
        Answer C{RPC_CM_CLUSTER_INFO} as a real meta: the leader gives the
        cluster's facts, a follower C{ERR_FORWARD_TO_OTHERS}; silence and
        delays apply as to query_cfg.

        @return: a L{Reply}, or a L{Deferred} of one.
        """
        cluster = self.cluster
        silent = cluster.silent if self.silent is None else self.silent
        if silent:
            return defer.Deferred()
        leader = cluster.leader
        if leader is self:
            reply = Reply(clusterinfo.encode_result(codes.ERR_OK, {
                "meta_servers": cluster.meta_addrs(),
                "primary_meta_server": self.address,
                "zookeeper_hosts": "",
                "zookeeper_root": f"/pegasus/{cluster.cluster_name}",
                "meta_function_level": "fl_steady",
                "balance_operation_count": "move_pri=0,copy_pri=0,copy_sec=0,total=0",
                "primary_replica_count_stddev": "0.00",
                "total_replica_count_stddev": "0.00",
                "cluster_name": cluster.cluster_name,
            }))
        else:
            reply = Reply(clusterinfo.encode_result(codes.ERR_FORWARD_TO_OTHERS, {}))
        delay = cluster.delay if self.delay is None else self.delay
        if delay > 0:
            return task.deferLater(cluster.reactor, delay, lambda: reply)
        return reply

    def _reply(self, request):
        cluster = self.cluster
        leader = cluster.leader
        if leader is not self:
            if leader is None:
                return _LEADER_UNKNOWN
            if self._forward_to is not leader or self._forward is None:
                self._forward = Reply(querycfg.forward_result(leader.rpc_address()))
                self._forward_to = leader
            return self._forward
        if cluster.not_active:
            return _NOT_ACTIVE
        app_name, indices = cluster.decode_args(request.args)
        body = cluster.model.query_body(app_name, indices)
        if body is not self._last_body:  # the pre-encoded answer changed
            self._last_body, self._last_reply = body, Reply(body)
        return self._last_reply


@attrs.define(eq=False)
class SimulatedCluster(Service):
    """
    N simulated metas, one leader, one table model, and fault switches.

    @ivar reactor: provides L{IReactorTCP} and L{IReactorTime}.
    @ivar metas: the metas' C{"ip:port"} addresses (port 0: any free port).
    @ivar model: the tables; see L{SimModel}.
    @ivar leader_index: the leader's index, or L{None} while unknown
        (followers then answer a forward without an address).
    @ivar delay: seconds every meta waits before answering.
    @ivar not_active: the leader answers C{ERR_SERVICE_NOT_ACTIVE}.
    @ivar silent: no meta ever answers.
    @ivar enable_auth: answer C{RPC_NEGOTIATION} with Kerberos (SASL
        GSSAPI) as a meta with C{[security] enable_auth} does, instead of
        C{SASL_AUTH_DISABLE}.
    @ivar mandatory_auth: close sessions that send anything else before
        negotiating, as a meta with C{mandatory_auth} does.
    @ivar keytab: the metas' service keytab (the library default when empty).
    @ivar allow: principals or user names accepted (empty: all).
    @ivar run: C{run(f, *args) -> Deferred} for blocking GSS-API calls;
        the reactor's thread pool when L{None}.
    """

    reactor: object
    metas: tuple = ("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")
    model: SimModel = attrs.Factory(SimModel)
    cluster_name: str = "sim"
    leader_index: Optional[int] = 0
    delay: float = 0.0
    not_active: bool = False
    silent: bool = False
    enable_auth: bool = False
    mandatory_auth: bool = False
    keytab: str = ""
    allow: tuple = ()
    run: object = None
    servers: list = attrs.field(init=False, factory=list)
    _args_cache: dict = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self):
        for i, text in enumerate(self.metas):
            host, port = parse_sim_address(text)
            self.servers.append(SimulatedMeta(self, i, host, port))

    def secured(self, handler):
        """
        @return: C{handler} behind the negotiation a meta with this
            cluster's C{[security]} settings runs (a
            L{metaproxy.security.downstream.NegotiatingHandler}).
        """
        from metaproxy.security.downstream import NegotiatingHandler

        acceptor = None
        if self.enable_auth:
            from metaproxy.security.sasl import keytab_acceptor

            acceptor = keytab_acceptor(self.keytab)
        run = self.run
        if run is None and acceptor is not None:
            from metaproxy.security.upstream import thread_runner

            run = thread_runner(self.reactor)
        return NegotiatingHandler(
            handler, acceptor, run, mandatory=self.enable_auth and self.mandatory_auth, allow=frozenset(self.allow),
            clock=self.reactor,
        )

    def auth_counts(self):
        """@return: the negotiation outcomes summed over the metas."""
        total = {}
        for meta in self.servers:
            for k, v in meta.handler.counts.items():
                total[k] = total.get(k, 0) + v
        return total

    @property
    def leader(self):
        """@return: the leader L{SimulatedMeta}, or L{None} while unknown."""
        if self.leader_index is None:
            return None
        return self.servers[self.leader_index]

    def addresses(self):
        """@return: the metas' C{"ip:port"} addresses (bound ports once started)."""
        return [m.address for m in self.servers]

    def meta_addrs(self):
        """@return: the addresses as one C{"a,b,c"} string, as a route holds them."""
        return ",".join(self.addresses())

    # -- service

    def startService(self):
        """Start every meta listening."""
        super().startService()
        for meta in self.servers:
            meta.start()
        log.info(
            "simulated meta cluster {cluster} on {metas}, leader {leader}",
            cluster=self.cluster_name,
            metas=self.meta_addrs(),
            leader=self.leader.address if self.leader else None,
        )

    def stopService(self):
        """@return: a L{Deferred} firing once every meta stopped listening."""
        super().stopService()
        return defer.gatherResults([m.stop() for m in self.servers]).addCallback(lambda _: None)

    # -- fault switches

    def set_leader(self, index):
        """Make meta C{index} the leader (L{None}: the leader is unknown)."""
        self.leader_index = index

    def stop_meta(self, index):
        """
        Take meta C{index} down: stop listening, drop its connections.

        @return: a L{Deferred} firing once its port is closed.
        """
        return self.servers[index].stop()

    def start_meta(self, index):
        """Bring meta C{index} back on its port."""
        self.servers[index].start()

    def set_delay(self, seconds, index=None):
        """Make every meta (or only meta C{index}) answer after C{seconds}."""
        if index is None:
            self.delay = seconds
        else:
            self.servers[index].delay = seconds

    def set_not_active(self, flag):
        """Make the leader answer C{ERR_SERVICE_NOT_ACTIVE} (or stop doing so)."""
        self.not_active = flag

    def set_silent(self, flag, index=None):
        """Make every meta (or only meta C{index}) never answer (or answer again)."""
        if index is None:
            self.silent = flag
        else:
            self.servers[index].silent = flag

    def create_table(self, name, partition_count, app_id=None):
        """Add a table; see L{SimModel.create_table}."""
        return self.model.create_table(name, partition_count, app_id)

    def drop_table(self, name):
        """Remove a table; see L{SimModel.drop_table}."""
        self.model.drop_table(name)

    def set_partition_count(self, name, partition_count):
        """Change a table's partition count; see L{SimModel.set_partition_count}."""
        self.model.set_partition_count(name, partition_count)

    def answered(self):
        """@return: how many queries each meta answered, by index."""
        return [m.answered for m in self.servers]

    # -- hot path

    def decode_args(self, args):
        """
        @return: C{(app_name, partition_indices)} of a query_cfg args struct,
            from a small cache keyed by the raw bytes (clients repeat them).
        """
        hit = self._args_cache.get(args)
        if hit is None:
            query = querycfg.decode_args(args)
            hit = (query.app_name, query.partition_indices)
            if len(self._args_cache) >= _ARGS_CACHE_SIZE:
                self._args_cache.clear()
            self._args_cache[args] = hit
        return hit


def _replicas_for(cluster_number):
    """@return: onebox-like replica addresses, distinct per cluster."""
    return tuple((h, p + 100 * cluster_number) for h, p in DEFAULT_REPLICAS)


def build_simulator_service(simulator_config, reactor):
    """
    Start simulated clusters from a config-shaped object.

    @param simulator_config: has C{.clusters}, each with C{.name}, C{.metas}
        (C{"ip:port"} strings) and C{.tables} (a mapping of table name to an
        object with C{.partition_count} and C{.app_id}, L{None} meaning
        "assign 1, 2, ..."); optional C{.host_ports} (send C{hp_*} fields).
    @param reactor: the reactor the metas listen on.
    @return: a L{MultiService} with one L{SimulatedCluster} child per
        cluster, named by the cluster's name.
    @raise ValueError: for a bad meta address or partition count.
    """
    top = MultiService()
    host_ports = bool(getattr(simulator_config, "host_ports", False))
    for number, spec in enumerate(simulator_config.clusters):
        model = SimModel(replicas=_replicas_for(number), host_ports=host_ports)
        cluster = SimulatedCluster(
            reactor, tuple(spec.metas), model, cluster_name=spec.name,
            enable_auth=bool(getattr(spec, "enable_auth", False)),
            mandatory_auth=bool(getattr(spec, "mandatory_auth", False)),
            keytab=getattr(spec, "keytab", "") or "",
            allow=tuple(getattr(spec, "allow", ()) or ()),
        )
        for table, tspec in spec.tables.items():
            cluster.create_table(table, tspec.partition_count, getattr(tspec, "app_id", None))
        cluster.setName(spec.name)
        cluster.setServiceParent(top)
    return top
