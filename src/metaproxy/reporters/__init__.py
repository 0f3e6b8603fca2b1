# -*- test-case-name: metaproxy.test.test_reporters -*-
"""
Metric reporters: ways of getting L{metaproxy.ops.metrics.Metrics} out.

Reporters are Twisted plugins providing
L{metaproxy.interfaces.IMetricsReporter}; the config's C{metric.type}
names one (C{none}: no reporter, no plugin). The built-ins (C{prometheus},
C{falcon}) are such plugins too, in C{twisted/plugins/metaproxy_reporters.py};
a site adds its own by installing a module into any C{twisted/plugins}
directory on the path, without touching metaproxy.
"""

from twisted.logger import Logger
from twisted.plugin import getPlugins

from metaproxy.interfaces import IMetricsReporter

log = Logger()

#: The C{metric.type} that means "report nothing"; it needs no plugin.
NO_REPORTER = "none"


class UnknownReporter(ValueError):
    """No installed reporter plugin has the name asked for."""


def available_reporters(package=None):
    """
    Find the installed reporter plugins.

    @param package: the plugin package to search (default:
        C{twisted.plugins}).
    @return: a L{dict} of reporter name -> plugin. A plugin without a
        string C{name} is left out; of two with one name, the first found
        is kept (both are logged).
    """
    if package is None:
        import twisted.plugins as package
    found = {}
    for plugin in getPlugins(IMetricsReporter, package):
        name = getattr(plugin, "name", None)
        if not isinstance(name, str):
            log.warn("metric reporter plugin {plugin!r} has no name; ignored", plugin=plugin)
        elif name in found:
            log.warn("two metric reporter plugins are called {name!r}: {kept!r} is used, {other!r} ignored",
                     name=name, kept=found[name], other=plugin)
        else:
            found[name] = plugin
    return found


def find_reporter(name, package=None):
    """
    Find the reporter plugin called C{name}.

    @param package: as for L{available_reporters}.
    @return: the plugin, providing L{IMetricsReporter}.
    @raise UnknownReporter: (a L{ValueError}) whose message names the
        reporters that exist, if none is called C{name}.
    """
    found = available_reporters(package)
    try:
        return found[name]
    except KeyError:
        names = ", ".join(repr(n) for n in sorted(found)) or "none installed"
        raise UnknownReporter(
            f"no metric reporter {name!r}; available: {names}, or {NO_REPORTER!r} for no metrics"
        ) from None
