# -*- test-case-name: metaproxy.test.test_security_kerberos -*-
"""
Builds metaproxy's Kerberos pieces from the C{security:} config section:
the credentials keeper (a service), one upstream negotiator per secured
cluster, the client-side negotiating handler, and their metrics.
"""

import attrs
from twisted.application.service import Service
from twisted.internet import threads
from twisted.python.threadpool import ThreadPool

from metaproxy.security.credentials import KerberosCredentials
from metaproxy.security.downstream import NegotiatingHandler
from metaproxy.security.sasl import keytab_acceptor
from metaproxy.security.upstream import UpstreamNegotiator


#: Threads for blocking GSS-API calls (KDC round trips, keytab reads) at
#: most; more calls wait in the pool's queue. Kept apart from the reactor's
#: pool so that a slow KDC cannot delay ZooKeeper restarts or config reloads.
KERBEROS_THREADS = 4


class _KerberosService(Service):
    """Runs the Kerberos thread pool and keeps the credentials fresh while running."""

    def __init__(self, pool, credentials):
        self.pool = pool
        self.credentials = credentials

    def startService(self):
        super().startService()
        self.pool.start()
        if self.credentials is not None:
            self.credentials.start()

    def stopService(self):
        super().stopService()
        if self.credentials is not None:
            self.credentials.stop()
        self.pool.stop()  # joins its threads: at most one KDC timeout at shutdown


@attrs.define(eq=False)
class Security:
    """
    metaproxy's Kerberos set-up.

    @ivar config: the L{metaproxy.config.SecurityConfig}.
    @ivar clock: the reactor's clock.
    @ivar run: C{run(f, *args) -> Deferred} for blocking GSS-API calls.
    @ivar pool: the thread pool C{run} uses, started and stopped by
        L{service} (L{None}: someone else's, e.g. a test's).
    @ivar credentials: the L{KerberosCredentials}, or L{None} without a
        principal.
    @ivar negotiators: cluster name -> L{UpstreamNegotiator}, one per
        secured cluster met so far.
    @ivar handler: the L{NegotiatingHandler} once L{wrap} was called.
    """

    config: object
    clock: object
    run: object
    pool: object = None
    credentials: object = attrs.field(init=False, default=None)
    negotiators: dict = attrs.field(init=False, factory=dict)
    handler: object = attrs.field(init=False, default=None)

    def __attrs_post_init__(self):
        if self.config.principal:
            self.credentials = KerberosCredentials(
                self.clock, self.config.principal, self.config.keytab, self.run, renew_ratio=self.config.renew_ratio
            )

    def service(self):
        """
        @return: the service that runs C{pool} and fetches credentials while
            running, or L{None} when Kerberos is not configured at all.
        """
        if self.pool is None or (self.credentials is None and not self.config.clients.enabled):
            return None
        return _KerberosService(self.pool, self.credentials)

    def negotiator_for(self, cluster_name):
        """@return: the cluster's L{UpstreamNegotiator}, or L{None} when it is not secured."""
        if self.credentials is None or not self.config.secures(cluster_name):
            return None
        negotiator = self.negotiators.get(cluster_name)
        if negotiator is None:
            negotiator = self.negotiators[cluster_name] = UpstreamNegotiator(
                self.clock, cluster_name, self.credentials, self.run,
                service_name=self.config.service_name, service_fqdn=self.config.service_fqdn,
                timeout=self.config.negotiation_timeout,
            )
        return negotiator

    def wrap(self, handler):
        """
        @return: C{handler} behind client-side negotiation as
            C{security.clients} says; C{handler} itself when it is off (its
            C{SASL_AUTH_DISABLE} answer stays, and the hot path is unchanged).
        """
        clients = self.config.clients
        if not clients.enabled:
            return handler
        self.handler = NegotiatingHandler(
            handler, keytab_acceptor(self.config.keytab), self.run, mandatory=clients.mandatory, allow=frozenset(clients.allow), clock=self.clock
        )
        return self.handler

    def watch(self, metrics):
        """Export the negotiation and credential metrics (docs/metrics.rst)."""

        def by_cluster(outcome):
            return lambda: {name: n.counts[outcome] for name, n in self.negotiators.items()}

        metrics.watch_counts("metaproxy_upstream_auth_ok",
                             "Kerberos negotiations with metas that succeeded, by cluster.", "cluster_name",
                             by_cluster("authenticated"))
        metrics.watch_counts("metaproxy_upstream_auth_failures",
                             "Kerberos negotiations with metas that failed, by cluster.", "cluster_name",
                             by_cluster("failed"))
        if self.handler is not None and self.config.clients.enabled:
            metrics.watch_counts("metaproxy_client_auth",
                                 "Client Kerberos negotiations and refusals, by outcome.", "outcome",
                                 lambda: self.handler.counts)
        if self.credentials is not None:
            creds = self.credentials
            metrics.watch_counts("metaproxy_kerberos_credential_fetches",
                                 "Ticket-granting tickets fetched from the keytab, by outcome.", "outcome",
                                 lambda: creds.counts)
            metrics.watch_gauges("metaproxy_kerberos_credential_seconds_left",
                                 "Seconds until metaproxy's Kerberos ticket expires (0: none held).", None,
                                 lambda: min(creds.seconds_left(), 1e9))

    def describe(self):
        """@return: a JSON-ready L{dict} of the credentials' state, or L{None}."""
        return None if self.credentials is None else self.credentials.describe()


def build_security(config, reactor):
    """
    @return: a L{Security} running blocking calls in a pool of its own of
        at most L{KERBEROS_THREADS} threads (started by its L{service}).
    """
    pool = ThreadPool(0, KERBEROS_THREADS, name="metaproxy-kerberos")

    def run(f, *args):
        return threads.deferToThreadPool(reactor, pool, f, *args)

    return Security(config, reactor, run, pool)
