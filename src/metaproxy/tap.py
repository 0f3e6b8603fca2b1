# -*- test-case-name: metaproxy.test.test_tap -*-
"""
C{twistd metaproxy --config=PATH}: command-line options and the service.

The twistd plugin (C{twisted/plugins/metaproxy_plugin.py}) points here.
"""

from twisted.python import usage

from metaproxy.config import ConfigError, load_config


class Options(usage.Options):
    """
    Options of C{twistd metaproxy}.

    The config file is loaded and checked in L{postOptions}, so a bad one
    ends twistd with its located message (C{file:line:col: what}) and exit
    status 1, never a traceback. After parsing, C{options["config"]} is the
    path as given and C{options["loaded"]} the L{metaproxy.config.Config}.
    """

    optParameters = [
        ["config", "c", None, "Path of the YAML configuration (see etc/metaproxy.yaml)."],
    ]

    def postOptions(self):
        """
        Load the configuration into C{self["loaded"]}.

        @raise usage.UsageError: no C{--config}, or the file is unusable
            (the message says where and what).
        """
        path = self["config"]
        if not path:
            raise usage.UsageError("--config=PATH is required (see etc/metaproxy.yaml)")
        try:
            self["loaded"] = load_config(path)
        except ConfigError as e:
            raise usage.UsageError(f"bad configuration:\n{e}") from None


def makeService(options, reactor=None):
    """
    Apply the config's C{logging:} section and build the service tree.

    @param options: parsed L{Options}.
    @param reactor: the reactor to build on; the global one by default
        (imported here, so that twistd's C{--reactor} choice is honoured).
    @return: metaproxy's L{MultiService<twisted.application.service.MultiService>}
        (see L{metaproxy.app.build_service}).
    """
    if reactor is None:
        from twisted.internet import reactor
    from metaproxy.app import build_service
    from metaproxy.logs import configure_logging

    config = options["loaded"]
    configure_logging(config.logging)
    # hot upgrade (SIGUSR2 / systemctl reload): metaproxy.upgrade, metaproxy.takeover
    from metaproxy.takeover import Takeover
    from metaproxy.upgrade import attach_hot_upgrade

    takeover = Takeover.from_environ(reactor)
    top = build_service(config, reactor, endpoint_for=None if takeover is None else takeover.endpoint_for)
    attach_hot_upgrade(top, reactor, options["config"], takeover)
    return top
