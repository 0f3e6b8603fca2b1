# -*- test-case-name: metaproxy.test.test_sim -*-
"""
In-memory fakes of L{IMetaCluster} and L{IClusterPools} for unit tests.

A L{FakeMetaCluster} answers from a L{metaproxy.sim.model.SimModel} (so
tests create tables on it), or holds every call until the test answers it,
or fails every call with L{BackendUnavailable}; it records every call.
"""

from typing import Optional
import attrs
from twisted.internet import defer
from zope.interface import implementer

from metaproxy.errors import BackendUnavailable
from metaproxy.interfaces import IClusterPools, IMetaCluster
from metaproxy.routes.route import MetaAddrs
from metaproxy.sim.model import SimModel
from metaproxy.wire import codes, querycfg
from metaproxy.wire.frame import Response

#: L{FakeMetaCluster.mode} values.
ANSWER, HOLD, UNAVAILABLE = "answer", "hold", "unavailable"


@attrs.define(eq=False)
class FakeCall:
    """One recorded L{FakeMetaCluster.query_config} call."""

    app_name: str
    partition_indices: tuple
    timeout: float
    deferred: defer.Deferred


@implementer(IMetaCluster)
@attrs.define(eq=False)
class FakeMetaCluster:
    """
    An L{IMetaCluster} without a network.

    @ivar meta_addrs: the L{MetaAddrs} it stands for.
    @ivar model: the tables answered in L{ANSWER} mode.
    @ivar mode: L{ANSWER} (answer at once from C{model}), L{HOLD} (wait for
        L{answer_pending} or L{fail_pending}) or L{UNAVAILABLE} (fail with
        L{BackendUnavailable}).
    @ivar calls: every call, oldest first.
    @ivar closed: L{True} after L{close}.
    """

    meta_addrs: MetaAddrs
    model: SimModel = attrs.Factory(SimModel)
    mode: str = ANSWER
    calls: list = attrs.field(factory=list)
    closed: bool = False
    last_used: float = 0.0

    def query_config(self, app_name, partition_indices, timeout):
        """Record the call and answer it as C{mode} says (see L{IMetaCluster})."""
        if self.closed:
            return defer.fail(BackendUnavailable("closed"))
        d = defer.Deferred()
        self.calls.append(FakeCall(app_name, tuple(partition_indices), timeout, d))
        if self.mode == ANSWER:
            d.callback(self.response_for(app_name, partition_indices))
        elif self.mode == UNAVAILABLE:
            d.errback(BackendUnavailable("fake cluster is unavailable"))
        return d

    def response_for(self, app_name, partition_indices=()):
        """@return: the L{Response} a leader would give, from C{model}."""
        body = self.model.query_body(app_name, tuple(partition_indices))
        return Response(codes.ERR_OK, querycfg.QUERY_CFG_ACK, 0, body)

    def pending(self):
        """@return: the recorded calls not answered yet."""
        return [c for c in self.calls if not c.deferred.called]

    def in_flight(self):
        """@return: how many calls are not answered yet."""
        return len(self.pending())

    def answer_pending(self, response=None):
        """
        Answer every held call, with C{response} or from C{model}.

        @return: how many calls were answered.
        """
        held = self.pending()
        for call in held:
            call.deferred.callback(
                response or self.response_for(call.app_name, call.partition_indices)
            )
        return len(held)

    def fail_pending(self, exc=None):
        """Fail every held call (with L{BackendUnavailable} by default)."""
        for call in self.pending():
            call.deferred.errback(exc or BackendUnavailable("fake failure"))

    def close(self):
        """Fail held calls, refuse new ones. @return: a fired L{Deferred}."""
        self.closed = True
        self.fail_pending(BackendUnavailable("closed"))
        return defer.succeed(None)


@implementer(IClusterPools)
@attrs.define(eq=False)
class FakeClusterPools:
    """
    An L{IClusterPools} handing out L{FakeMetaCluster}s.

    @ivar clusters: the clusters made so far, by L{MetaAddrs}.
    @ivar model: the L{SimModel} every new cluster answers from (shared), or
        L{None} for a fresh model per cluster.
    @ivar mode: the initial C{mode} of new clusters.
    @ivar closed: L{True} after L{close}.
    """

    model: Optional[SimModel] = None
    mode: str = ANSWER
    clusters: dict = attrs.field(factory=dict)
    closed: bool = False

    def get(self, meta_addrs, cluster_name=None):
        """@return: the L{FakeMetaCluster} for C{meta_addrs}, made on first use (C{cluster_name} is ignored)."""
        if not isinstance(meta_addrs, MetaAddrs):
            meta_addrs = MetaAddrs.parse(meta_addrs)
        cluster = self.clusters.get(meta_addrs)
        if cluster is None:
            model = self.model if self.model is not None else SimModel()
            cluster = FakeMetaCluster(meta_addrs, model, self.mode)
            self.clusters[meta_addrs] = cluster
        return cluster

    def close(self):
        """Close every cluster. @return: a fired L{Deferred}."""
        self.closed = True
        for cluster in self.clusters.values():
            cluster.close()
        return defer.succeed(None)
