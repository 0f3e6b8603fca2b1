# -*- test-case-name: metaproxy.test.test_tap -*-
"""
C{twistd metaproxy --config=PATH}: command-line options and the service.

The twistd plugin (C{twisted/plugins/metaproxy_plugin.py}) points here.
"""

import sys

from twisted.python import usage

from metaproxy.config import ConfigError, load_config


class Options(usage.Options):
    """
    Options of C{twistd metaproxy}.

    The config file is loaded and checked in L{postOptions}, so a bad one
    ends twistd with its located messages (C{file:line:col: what}) and exit
    status 2, as C{metaproxy check} does: no traceback, and no usage text
    (the command line was right; the file is not). After parsing, C{options["config"]} is the
    path as given and C{options["loaded"]} the L{metaproxy.config.Config}.
    """

    optParameters = [
        ["config", "c", None, "Path of the YAML configuration (see etc/metaproxy.yaml)."],
    ]
    optFlags = [
        ["check", None, "Check the configuration, print what would run, and exit (as `metaproxy check`)."],
    ]

    def opt_version(self):
        """Print metaproxy's version and exit."""
        from metaproxy import __version__

        print(f"metaproxy {__version__}")
        sys.exit(0)

    def postOptions(self):
        """
        Load the configuration into C{self["loaded"]}; with C{--check},
        print the one-line summary (exit 0) or every problem (exit 2)
        instead of serving.

        @raise usage.UsageError: no C{--config}.
        @raise SystemExit: (status 2) the file is unusable; every located
            problem was printed on stderr.
        """
        path = self["config"]
        if not path:
            raise usage.UsageError("--config=PATH is required (see etc/metaproxy.yaml)")
        if self["check"]:
            from metaproxy.cli.check import check_file
            from metaproxy.cli.common import CommandError

            try:
                print(check_file(path))
            except CommandError as e:
                print(e, file=sys.stderr)
                sys.exit(e.status)
            sys.exit(0)
        try:
            self["loaded"] = load_config(path)
        except ConfigError as e:
            print(f"twistd metaproxy: bad configuration, not started:\n{e}", file=sys.stderr)
            sys.exit(2)


def makeService(options, reactor=None, process=None):
    """
    Apply the config's C{logging:} section and build the service tree.

    @param options: parsed L{Options}.
    @param reactor: the reactor to build on; the global one by default
        (imported here, so that twistd's C{--reactor} choice is honoured).
    @param process: also add the process-wide hooks: C{sighup} (a
        L{metaproxy.ops.signals.HangupService}: SIGHUP reopens the log file and
        reloads C{logging.level}) and C{logfilter}
        (L{metaproxy.ops.logs.ForeignObserverFilter}, started first:
        C{logging.level} also filters twistd's default log observer). By default only when no
        reactor is given, i.e. when twistd calls this.
    @return: metaproxy's L{MultiService<twisted.application.service.MultiService>}
        (see L{metaproxy.app.build_service}).
    """
    if process is None:
        process = reactor is None
    if reactor is None:
        from twisted.internet import reactor
    from metaproxy.app import build_service
    from metaproxy.ops.logs import ForeignObserverFilter, configure_logging
    from metaproxy.ops.reloads import ConfigReloads
    from metaproxy.ops.signals import HangupService, LogReloader, run_in_thread

    config = options["loaded"]
    configure_logging(config.logging)
    # hot upgrade (SIGUSR2 / systemctl reload): metaproxy.ops.upgrade, metaproxy.ops.takeover
    from metaproxy.ops.takeover import Takeover
    from metaproxy.ops.upgrade import attach_hot_upgrade

    takeover = Takeover.from_environ(reactor)
    top = build_service(config, reactor, endpoint_for=None if takeover is None else takeover.endpoint_for)
    upgrader = attach_hot_upgrade(top, reactor, options["config"], takeover)
    # SIGHUP and SIGUSR2 re-read the config: metaproxy_config_last_reload_successful
    reloads = top.reloads = ConfigReloads(reactor)
    reloads.watch(top.metrics)
    upgrader.load = reloads.recording(upgrader.load)
    if process:
        reloader = LogReloader(options["config"], run_in_thread(reactor), read_config=reloads.recording(load_config))
        hooks = [
            ("logfilter", ForeignObserverFilter()),
            ("sighup", HangupService(reactor, reloader)),
        ]
        for name, service in hooks:
            service.setName(name)
            service.setServiceParent(top)
        # The filter starts first, before any port is bound and logged.
        top.services.remove(hooks[0][1])
        top.services.insert(0, hooks[0][1])
    return top
