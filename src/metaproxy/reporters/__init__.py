# -*- test-case-name: metaproxy.test.test_reporters -*-
"""
Metric reporters: ways of getting L{metaproxy.metrics.Metrics} out.

Reporters are Twisted plugins providing
L{metaproxy.interfaces.IMetricsReporter}; the config's C{metric.type}
names one. The built-ins (C{prometheus}, C{falcon}) are such plugins too, in
C{twisted/plugins/metaproxy_reporters.py}; a site adds its own by dropping a
module into any C{twisted/plugins} directory on the path.
"""

from twisted.plugin import getPlugins

from metaproxy.interfaces import IMetricsReporter


def available_reporters(package=None):
    """
    @param package: the plugin package to search (default: C{twisted.plugins}).
    @return: a L{dict} of reporter name -> plugin.
    """
    if package is None:
        import twisted.plugins as package
    return {p.name: p for p in getPlugins(IMetricsReporter, package)}


def find_reporter(name, package=None):
    """
    @return: the reporter plugin called C{name}.
    @raise ValueError: naming the reporters that exist, if none is called so.
    """
    found = available_reporters(package)
    try:
        return found[name]
    except KeyError:
        names = ", ".join(sorted(found)) or "none installed"
        raise ValueError(f"no metric reporter {name!r}; available: {names}, or 'none'") from None
