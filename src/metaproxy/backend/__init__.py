# -*- test-case-name: metaproxy.test.test_backend_pools -*-
"""
metaproxy's side of the conversation with Pegasus meta servers.

 - L{metaproxy.backend.client}: one TCP connection's protocol (seqids,
   pipelining, out-of-order matching, per-call deadlines);
 - L{metaproxy.backend.connection}: one reconnecting connection per meta
   address;
 - L{metaproxy.backend.cluster}: one cluster's metas, following the leader
   and hedging (L{metaproxy.interfaces.IMetaCluster});
 - L{metaproxy.backend.pools}: one cluster per distinct meta set, closed
   when no route needs it any more (L{metaproxy.interfaces.IClusterPools}).
"""
