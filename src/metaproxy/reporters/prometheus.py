# -*- test-case-name: metaproxy.test.test_reporters -*-
"""
The Prometheus reporter: C{/metrics} on the admin listener.

Served by a plain twisted.web resource calling C{generate_latest} in the
reactor thread (a few hundred microseconds), not by
C{prometheus_client.twisted}, which imports the global reactor at import
time and answers from a thread pool.
"""

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource


class MetricsPage(Resource):
    """Renders a registry in the Prometheus text format."""

    isLeaf = True

    def __init__(self, registry):
        super().__init__()
        self._registry = registry

    def render_GET(self, request):
        """@return: the current exposition of the registry."""
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


def mount(metrics, admin_root):
    """Add C{/metrics} for C{metrics} to C{admin_root}."""
    admin_root.putChild(b"metrics", MetricsPage(metrics.registry))
