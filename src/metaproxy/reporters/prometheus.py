# -*- test-case-name: metaproxy.test.test_reporters -*-
"""
The Prometheus reporter: C{/metrics} on the admin listener.

Served by a plain twisted.web resource that renders the registry in the
reactor thread (a few hundred microseconds), not by
C{prometheus_client.twisted}, which imports the global reactor at import
time and answers from a thread pool. The format follows the scraper's
C{Accept} header as prometheus_client's own handler does (OpenMetrics for
a Prometheus that asks for it, as the Go meta-proxy did; the text format
otherwise), gzipped when the scraper accepts gzip.
"""

import gzip

from prometheus_client.exposition import choose_encoder
from twisted.logger import Logger
from twisted.web.resource import Resource

log = Logger()


class MetricsPage(Resource):
    """
    Renders a prometheus_client registry for scrapers.

    A registry that fails to render gives a 500 (and a logged traceback),
    never a broken page.
    """

    isLeaf = True

    def __init__(self, registry):
        """
        @param registry: the L{prometheus_client.CollectorRegistry} to render.
        """
        super().__init__()
        self._registry = registry

    def render_GET(self, request):
        """@return: the current exposition of the registry."""
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        try:
            body = encoder(self._registry)
        except Exception:
            log.failure("rendering /metrics failed")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain")
            return b"metrics could not be rendered; see the log\n"
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        if b"gzip" in (request.getHeader(b"accept-encoding") or b""):
            request.setHeader(b"content-encoding", b"gzip")
            return gzip.compress(body, compresslevel=1)
        return body


def mount(metrics, admin_root):
    """
    Serve C{metrics} as C{/metrics} of C{admin_root}.

    @param metrics: a L{metaproxy.ops.metrics.Metrics}.
    @param admin_root: the admin listener's root resource.
    """
    admin_root.putChild(b"metrics", MetricsPage(metrics.registry))
