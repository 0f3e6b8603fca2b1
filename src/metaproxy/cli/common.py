# -*- test-case-name: metaproxy.test.test_cli -*-
"""
What every C{metaproxy} command shares: its error type, loading the config,
asking for confirmation, and running a piece of work on the reactor.
"""

import argparse
import os
import sys

from twisted.internet import defer
from twisted.python.failure import Failure

from metaproxy.config import ConfigError, load_config

#: Exit statuses: done; the operation failed or was refused; bad usage or config.
OK, FAILED, USAGE = 0, 1, 2


class CommandError(Exception):
    """
    A command cannot do what it was asked; C{str()} is the message for the
    operator and C{status} the exit status (L{FAILED} or L{USAGE}).
    """

    def __init__(self, message, status=FAILED):
        super().__init__(message)
        self.status = status


#: Where the commands read the config when neither C{--config} nor
#: C{$METAPROXY_CONFIG} says otherwise (where the packaged unit has it).
DEFAULT_CONFIG = "/etc/metaproxy/metaproxy.yaml"
CONFIG_ENV = "METAPROXY_CONFIG"

#: The flags every command accepts before or after its name (C{metaproxy
#: --json routes list} = C{metaproxy routes list --json}): C{dest} -> default.
GLOBAL_DEFAULTS = {"config": None, "json": False, "yes": False, "dry_run": False}


def add_global_arguments(parser):
    """
    Add the global flags to one parser level (the top, a command, a
    sub-command). None has a default at any level, so a flag given before
    the command name is not reset by the command's parser;
    L{finish_global_arguments} fills the defaults in afterwards.
    """
    hide = argparse.SUPPRESS
    parser.add_argument(
        "--config", "-c", metavar="FILE", default=hide,
        help=f"the metaproxy config (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    parser.add_argument("--json", action="store_true", default=hide, help="print JSON (list, get, resolve)")
    parser.add_argument("--yes", "-y", action="store_true", default=hide,
                        help="do not ask before writing (set, switch, delete)")
    parser.add_argument("--dry-run", action="store_true", default=hide,
                        help="show what would change; write nothing (set, switch, delete)")


def finish_global_arguments(args, accepts):
    """
    Give every global flag not given its default, and refuse one given to
    a command that has no use for it.

    @param accepts: the C{dest}s of the global flags the command uses.
    @raise CommandError: (L{USAGE}) for a flag the command does not use.
    """
    for dest, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, dest):
            setattr(args, dest, default)
        elif dest not in accepts and getattr(args, dest) != default:
            flag = "--" + dest.replace("_", "-")
            raise CommandError(f"{flag} does not apply to this command", USAGE)


def add_wait_argument(parser, flag, default, what):
    """
    Add a timeout flag: C{flag} seconds (L{None} until given, see
    L{wait_seconds}) described by C{what} it bounds.
    """
    parser.add_argument(flag, type=float, default=None, metavar="S", help=f"{what} (default {default:g})")
    parser.set_defaults(**{"default_" + flag.lstrip("-").replace("-", "_"): default})


def wait_seconds(args, flag):
    """
    @return: the seconds of a flag added by L{add_wait_argument}: as given,
        else the deprecated C{--timeout} (which set every wait), else its
        default.
    @raise CommandError: (L{USAGE}) unless it is > 0 and <= 3600.
    """
    dest = flag.lstrip("-").replace("-", "_")
    value = getattr(args, dest, None)
    if value is None:
        value = getattr(args, "timeout", None)
    if value is None:
        value = getattr(args, "default_" + dest)
    if not 0 < value <= 3600:
        raise CommandError(f"{flag} must be > 0 and <= 3600 seconds", USAGE)
    return value


def config_path(args):
    """
    @return: the config file the command reads: C{--config}, else
        C{$METAPROXY_CONFIG}, else L{DEFAULT_CONFIG}.
    @raise CommandError: (L{USAGE}) when none was given and the default
        file does not exist: the message says how to name one.
    """
    if args.config:
        return args.config
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    if from_env:
        return from_env
    if not os.path.exists(DEFAULT_CONFIG):
        raise CommandError(
            f"no configuration: {DEFAULT_CONFIG} does not exist; give --config FILE or set {CONFIG_ENV}", USAGE
        )
    return DEFAULT_CONFIG


def load(path):
    """
    @return: the L{metaproxy.config.Config} at C{path}.
    @raise CommandError: with every located problem (status L{USAGE}).
    """
    try:
        return load_config(path)
    except ConfigError as e:
        raise CommandError(f"bad configuration:\n{e}", USAGE) from None


def confirm(question, yes, stdin=None, stdout=None):
    """
    Ask the operator before a write.

    @param yes: L{True} when C{--yes} was given: no question is asked.
    @raise CommandError: when not confirmed, or when C{stdin} is not a
        terminal (a script must say C{--yes}).
    """
    if yes:
        return
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    if not stdin.isatty():
        raise CommandError("not confirmed: give --yes (stdin is not a terminal); nothing written")
    stdout.write(f"{question} [y/N] ")
    stdout.flush()
    answer = stdin.readline()
    if answer.strip().lower() not in ("y", "yes"):
        raise CommandError("not confirmed; nothing written")


def run_on_reactor(work):
    """
    Run C{work(reactor)} on the global reactor and stop it once the
    L{Deferred} it returns has fired. The reactor can run once per process:
    call this at most once per command.

    @return: what that Deferred fired with.
    @raise Exception: what it failed with.
    """
    from twisted.internet import reactor

    outcome = []

    def start():
        d = defer.maybeDeferred(work, reactor)
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome:
        raise CommandError("interrupted")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
