# -*- test-case-name: metaproxy.test.test_reporters -*-
"""
metaproxy's built-in metric reporters, as Twisted plugins providing
L{metaproxy.interfaces.IMetricsReporter}: C{prometheus} and C{falcon}.
(C{metric.type: none} needs no plugin.)

There is NO __init__.py in src/twisted or src/twisted/plugins. Keep the
imports light: every twistd run imports this module; the reporters' own
modules are imported only when one is used.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from metaproxy.interfaces import IMetricsReporter


@implementer(IPlugin, IMetricsReporter)
class _Prometheus:
    """Serves C{/metrics} on the admin listener; needs no service."""

    name = "prometheus"

    def makeService(self, metrics, metric_config, reactor, admin_root):
        """Mount C{/metrics} on C{admin_root}. @return: L{None}."""
        from metaproxy.reporters.prometheus import mount

        mount(metrics, admin_root)
        return None


@implementer(IPlugin, IMetricsReporter)
class _Falcon:
    """Pushes to an Open-Falcon agent every C{metric.falcon.step} seconds."""

    name = "falcon"

    def makeService(self, metrics, metric_config, reactor, admin_root):
        """@return: the pushing L{metaproxy.reporters.falcon.FalconService}."""
        from metaproxy.reporters.falcon import make_service

        return make_service(metrics, metric_config, reactor)


prometheus = _Prometheus()
falcon = _Falcon()
