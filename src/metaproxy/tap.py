# -*- test-case-name: metaproxy.test.test_tap -*-
"""
C{twistd metaproxy --config=PATH}: command-line options and the service.
"""

from twisted.python import usage

from metaproxy.config import ConfigError, load_config


class Options(usage.Options):
    """
    Options of C{twistd metaproxy}. The config file is loaded and checked
    here, so a bad one ends twistd with its located message, not a traceback.
    """

    optParameters = [
        ["config", "c", None, "Path of the YAML configuration (see etc/metaproxy.yaml)."],
    ]

    def postOptions(self):
        """
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
    @param options: parsed L{Options}.
    @return: metaproxy's service tree (see L{metaproxy.app.build_service}).
    """
    if reactor is None:
        from twisted.internet import reactor
    from metaproxy.app import build_service
    from metaproxy.logs import configure_logging

    config = options["loaded"]
    configure_logging(config.logging)
    return build_service(config, reactor)
