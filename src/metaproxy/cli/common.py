# -*- test-case-name: metaproxy.test.test_cli -*-
"""
What every C{metaproxy} command shares: its error type, loading the config,
asking for confirmation, and running a piece of work on the reactor.
"""

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
