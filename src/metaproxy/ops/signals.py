# -*- test-case-name: metaproxy.test.test_signals -*-
"""
SIGHUP: reopen the log file and reload the log level, never die.

logrotate moves C{logging.file} away and sends SIGHUP; metaproxy then
reopens the file by its path, re-reads the config file with the project's
own loader (L{metaproxy.config.load_config}, in a thread: the reactor
never waits on a disk) and applies its C{logging.level}. A config file
that no longer loads keeps the old level, and the log line says why.
Nothing else in the config is re-read: a full reload is the job of the
zero-downtime upgrade (C{systemctl reload}), not of SIGHUP.

Without this, SIGHUP's default action ends the process with status 129.
"""

import signal
from typing import Callable, Optional

import attrs
from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.logger import Logger

from metaproxy.ops import logs
from metaproxy.config import ConfigError, load_config

log = Logger()

#: The longest config error quoted in the SIGHUP line.
MAX_REASON = 2000


def _bounded(text):
    text = str(text)
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + f"... ({len(text)} characters)"


def run_in_thread(reactor):
    """@return: C{callable(f, *args) -> Deferred} running C{f} in C{reactor}'s thread pool."""
    return lambda f, *args: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


@attrs.define(eq=False)
class LogReloader:
    """
    What SIGHUP does (see the module docstring). One reload runs at a time;
    a SIGHUP during one makes one more run after it.

    @ivar config_path: the file given with C{--config}.
    @ivar in_thread: C{callable(f, *args) -> Deferred} that runs C{f}
        away from the reactor thread (L{run_in_thread}).
    @ivar read_config: C{callable(path) -> Config}; raises with a located
        message for a bad file.
    """

    config_path: str
    in_thread: Callable
    read_config: Callable = load_config
    _running: Optional[defer.Deferred] = attrs.field(init=False, default=None)
    _again: bool = attrs.field(init=False, default=False)

    def reload(self):
        """
        Reopen the log file now, then re-read the config and apply its
        C{logging.level}; log one line saying what happened.

        @return: a L{Deferred} firing with L{None} when done; it never fails.
        """
        if self._running is not None:
            self._again = True
            return self._running
        d = self._running = defer.Deferred.fromCoroutine(self._reload())
        d.addErrback(lambda f: log.failure("SIGHUP handling failed", f))
        d.addBoth(self._done)
        return d

    def _done(self, _):
        self._running = None
        if self._again:
            self._again = False
            return self.reload()
        return None

    async def _reload(self):
        parts, problem = [], False
        try:
            path = logs.reopen_file()
            parts.append(f"log file {path} reopened" if path else "no log file to reopen")
        except OSError as e:
            problem = True
            parts.append(f"log file {logs.file_path()} not reopened, still writing to the old one: "
                         f"{e.strerror or e}")
        old = logs.current_level()
        try:
            config = await self.in_thread(self.read_config, self.config_path)
            new = logs.level_named(config.logging.level)
        except Exception as e:  # ConfigError, or anything a broken file provokes
            problem = True
            reason = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
            parts.append(f"logging.level stays {old.name}: {self.config_path} not reloaded: {_bounded(reason)}")
            log.warn("SIGHUP: {what}", what="; ".join(parts))
            return
        parts.append(f"logging.level {old.name} -> {new.name}" if new != old else f"logging.level {old.name}")
        if config.logging.file != logs.file_path():
            parts.append(f"logging.file {config.logging.file} takes effect at the next start")
        # Said at the lower of both levels, so that it shows either way.
        logs.set_level(min(old, new).name)
        if problem:
            log.warn("SIGHUP: {what}", what="; ".join(parts))
        else:
            log.info("SIGHUP: {what}", what="; ".join(parts))
        logs.set_level(new.name)


class HangupService(Service):
    """
    Handles SIGHUP while running (L{LogReloader.reload}, started from the
    reactor thread); restores the previous handler when stopped.
    """

    def __init__(self, reactor, reloader):
        """
        @param reactor: runs the reload (C{callFromThread}).
        @param reloader: a L{LogReloader}.
        """
        self._reactor = reactor
        self.reloader = reloader
        self._installed = False
        self._previous = None

    def privilegedStartService(self):
        """Install the SIGHUP handler as early as twistd starts services."""
        super().privilegedStartService()
        self._install()

    def startService(self):
        """Install the SIGHUP handler unless L{privilegedStartService} did."""
        super().startService()
        self._install()

    def _install(self):
        if self._installed:
            return
        try:
            self._previous = signal.signal(signal.SIGHUP, self._received)
            self._installed = True
        except (ValueError, OSError, AttributeError) as e:
            log.warn("SIGHUP cannot be handled here ({why}); it would end the process", why=e)

    def _received(self, signum, frame):
        # A signal handler: hand over to the reactor thread and return.
        self._reactor.callFromThread(self.reloader.reload)

    def stopService(self):
        """Restore the handler that was there before."""
        super().stopService()
        if self._installed:
            self._installed = False
            try:
                signal.signal(signal.SIGHUP, signal.SIG_DFL if self._previous is None else self._previous)
            except (ValueError, OSError):
                pass
            self._previous = None
