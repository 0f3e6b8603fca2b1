# Metric reporter plugins of metaproxy. NO __init__.py in src/twisted or
# src/twisted/plugins. Keep imports light: every twistd run imports this.
from twisted.plugin import IPlugin
from zope.interface import implementer

from metaproxy.interfaces import IMetricsReporter


@implementer(IPlugin, IMetricsReporter)
class _Prometheus:
    name = "prometheus"

    def makeService(self, metrics, metric_config, reactor, admin_root):
        from metaproxy.reporters.prometheus import mount

        mount(metrics, admin_root)
        return None


@implementer(IPlugin, IMetricsReporter)
class _Falcon:
    name = "falcon"

    def makeService(self, metrics, metric_config, reactor, admin_root):
        from metaproxy.reporters.falcon import make_service

        return make_service(metrics, metric_config, reactor)


prometheus = _Prometheus()
falcon = _Falcon()
