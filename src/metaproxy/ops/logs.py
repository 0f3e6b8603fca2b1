# -*- test-case-name: metaproxy.test.test_logs -*-
"""
Logging for metaproxy, all through L{twisted.logger}.

 - C{twistd --logger=metaproxy.ops.logs.journal_text}: plain text on stdout with
   journald priority prefixes (C{<6>} info, C{<4>} warn, C{<3>} error), no
   timestamps (journald adds them). The systemd unit uses it.
 - C{twistd --logger=metaproxy.ops.logs.json_lines}: one JSON object per line,
   with the rendered message in C{"msg"}.
 - L{configure_logging} applies the config's C{logging:} section: a minimum
   level, and optionally a file with size rotation and retention.
 - stdlib logging (kazoo's) is bridged into twisted.logger.
 - L{filter_foreign_observers} puts the same level in front of observers
   metaproxy did not make (twistd's default one), so C{logging.level}
   applies to every output.
 - L{set_level} and L{reopen_file} are what SIGHUP uses
   (L{metaproxy.ops.signals}).
"""

import fcntl
import json
import logging
import os
import sys

from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python import threadable
from twisted.python.logfile import LogFile
from zope.interface import implementer

_PRIORITY = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}

#: The level the config's C{logging.level} sets; events below it are dropped
#: by the observers made here; C{file} is the file observer in use, if any.
_level = {"value": LogLevel.info}
_file = {"observer": None, "publisher": None, "logfile": None, "path": None}

_STDLIB_LEVEL = {
    LogLevel.debug: logging.DEBUG,
    LogLevel.info: logging.INFO,
    LogLevel.warn: logging.WARNING,
    LogLevel.error: logging.ERROR,
    LogLevel.critical: logging.CRITICAL,
}


def current_level():
    """@return: the minimum L{LogLevel} metaproxy's observers let through."""
    return _level["value"]


def _enabled(event):
    level = event.get("log_level", LogLevel.info)
    return PredicateResult.yes if level >= _level["value"] else PredicateResult.no


def level_named(name):
    """
    @param name: a C{logging.level} value (C{warning} is taken for C{warn}).
    @return: the L{LogLevel}.
    @raise InvalidLogLevelError: for any other name.
    """
    return LogLevel.levelWithName("warn" if name == "warning" else name)


def set_level(name):
    """
    Make C{name} the minimum level of every metaproxy observer and of the
    stdlib bridge (kazoo), at once.

    @param name: a C{logging.level} value.
    @return: the L{LogLevel} that was in force before.
    """
    old = _level["value"]
    level = level_named(name)
    _level["value"] = level
    root = logging.getLogger()
    if any(isinstance(h, _StdlibBridge) for h in root.handlers):
        root.setLevel(_STDLIB_LEVEL[level])
    return old


class _LevelFilter(FilteringLogObserver):
    """A L{FilteringLogObserver} applying C{logging.level}; made only here."""

    def __init__(self, observer):
        super().__init__(observer, [_enabled])
        self.wrapped = observer


def filter_foreign_observers(publisher=globalLogPublisher):
    """
    Put C{logging.level} in front of every observer of C{publisher} that
    metaproxy did not make, e.g. twistd's default text observer (twistd
    builds it itself; C{--logger=metaproxy.ops.logs.journal_text} and
    C{json_lines} filter on their own). Call it once logging has begun.

    @return: how many observers were wrapped.
    """
    observers = getattr(publisher, "_observers", None)
    if observers is None:
        return 0
    wrapped = 0
    for observer in list(observers):
        if isinstance(observer, _LevelFilter):
            continue
        publisher.removeObserver(observer)
        publisher.addObserver(_LevelFilter(observer))
        wrapped += 1
    return wrapped


class ForeignObserverFilter(Service):
    """
    When started (twistd starts services after its logging began; add it
    as the first service), puts
    C{logging.level} in front of the observers metaproxy did not make:
    see L{filter_foreign_observers}. Events twistd logs before that (its
    two start-up lines) are not filtered.
    """

    def __init__(self, publisher=globalLogPublisher):
        self._publisher = publisher

    def privilegedStartService(self):
        """Wrap the foreign observers (twistd binds ports in this phase: start it first)."""
        super().privilegedStartService()
        filter_foreign_observers(self._publisher)

    def startService(self):
        """Wrap the foreign observers (again: a no-op for those already wrapped)."""
        super().startService()
        filter_foreign_observers(self._publisher)


def reopen_file():
    """
    Reopen C{logging.file} by its path, after logrotate moved it away.

    The path is opened for appending first, so a file that cannot be
    reopened leaves the old one in use (and raises).

    @return: the path reopened, or L{None} if no log file is configured.
    @raise OSError: the path cannot be opened; the old file is kept.
    """
    logfile = _file["logfile"]
    if logfile is None:
        return None
    with open(logfile.path, "a"):
        pass
    logfile.reopen()
    return _file["path"]


def file_path():
    """@return: the C{logging.file} path in use, or L{None}."""
    return _file["path"]


def format_journal(event):
    """@return: one journald-ready line: C{<priority>[namespace] message}."""
    text = formatEvent(event)
    if event.get("log_failure") is not None:
        try:
            text += "\n" + event["log_failure"].getTraceback()
        except Exception:
            pass
    priority = _PRIORITY.get(event.get("log_level"), 6)
    namespace = event.get("log_namespace", "-")
    return "".join(f"<{priority}>[{namespace}] {line}\n" for line in text.splitlines() or [""])


@implementer(ILogObserver)
class _LineObserver:
    def __init__(self, stream, fmt):
        self._stream = stream
        self._fmt = fmt

    def __call__(self, event):
        try:
            self._stream.write(self._fmt(event))
            self._stream.flush()
        except Exception:
            pass


def journal_text():
    """The twistd C{--logger} factory for journald (stdout, priorities)."""
    return _LevelFilter(_LineObserver(sys.stdout, format_journal))


def format_json(event):
    """@return: one JSON line with time, level, namespace, msg and named fields."""
    out = {
        "time": event.get("log_time"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace"),
        "msg": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in out:
            try:
                json.dumps(value)
                out[key] = value
            except (TypeError, ValueError):
                out[key] = repr(value)
    return json.dumps(out) + "\n"


def json_lines():
    """The twistd C{--logger} factory for JSON lines on stdout."""
    return _LevelFilter(_LineObserver(sys.stdout, format_json))


class _StdlibBridge(logging.Handler):
    """Forwards stdlib logging records (kazoo's) into twisted.logger."""

    _LEVELS = {
        logging.DEBUG: LogLevel.debug,
        logging.INFO: LogLevel.info,
        logging.WARNING: LogLevel.warn,
        logging.ERROR: LogLevel.error,
        logging.CRITICAL: LogLevel.critical,
    }

    def __init__(self, publisher):
        super().__init__()
        self._publisher = publisher

    def emit(self, record):
        level = self._LEVELS.get(record.levelno, LogLevel.info)
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        self._publisher(
            {
                "log_level": level,
                "log_namespace": record.name,
                "log_format": "{text}",
                "text": text,
                "log_time": record.created,
                "log_source": None,
            }
        )


def bridge_stdlib_logging(publisher=globalLogPublisher, level=logging.INFO):
    """
    Route stdlib logging (kazoo logs through it) into twisted.logger.

    @return: the handler installed on the root logger.
    """
    handler = _StdlibBridge(publisher)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibBridge)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


class SharedLogFile(LogFile):
    """
    A size-rotated log file that several processes of one service may
    write at the same time (the old and the new process of a hot upgrade,
    or a second instance started by mistake) without tearing each other's
    lines.

    Twisted's own L{LogFile} opens the file C{r+}, seeks to its end once
    and then writes at its own offset: a second writer overwrites it. Here
     - the file is opened C{O_APPEND}: every write lands at the end of the
       file as it is at that moment, whoever wrote last;
     - each event (one line, or a line and its traceback) is written by one
       C{write(2)} call, so it stays whole;
     - the size that decides rotation is the file's (C{fstat}), not what
       this process wrote;
     - rotation happens under an exclusive C{flock} of the full file: a
       writer that then finds the path naming another file (another process
       rotated it) reopens the path instead of rotating again.

    Writes happen on the caller's thread, as with Twisted's L{LogFile}.
    """

    def _openFile(self):
        self.closed = False
        mode = 0o666 if self.defaultMode is None else self.defaultMode
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
        self._file = os.fdopen(fd, "ab", 0)
        stat = os.fstat(fd)
        self._identity = (stat.st_dev, stat.st_ino)
        self.size = stat.st_size

    def _file_size(self):
        self.size = os.fstat(self._file.fileno()).st_size
        return self.size

    def shouldRotate(self):
        """@return: whether the file (as written by every process) reached C{rotateLength}."""
        return bool(self.rotateLength) and self._file_size() >= self.rotateLength

    def write(self, data):
        """
        Append C{data} (text is encoded as UTF-8) with one C{write(2)}
        call (more only if the kernel takes part of it), rotating first
        when the file is full.
        """
        if self.shouldRotate():
            self.rotate()
        if isinstance(data, str):
            data = data.encode("utf8")
        view = memoryview(data)
        fd = self._file.fileno()
        while view:
            view = view[os.write(fd, view):]
        self.size += len(data)

    def _path_is_ours(self):
        try:
            stat = os.stat(self.path)
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._identity

    def rotate(self):
        """
        Rename the full file to C{.1} (shifting older ones, deleting those
        beyond C{maxRotatedFiles}) and open a new one, unless another
        process already did: then just reopen the path. When the directory
        or file is not writable, go on with the current file.
        """
        old = self._file
        fcntl.flock(old.fileno(), fcntl.LOCK_EX)
        try:
            if not self._path_is_ours():
                self._openFile()
                return
            if not (os.access(self.directory, os.W_OK) and os.access(self.path, os.W_OK)):
                return
            for i in reversed(self.listLogs()):
                if self.maxRotatedFiles is not None and i >= self.maxRotatedFiles:
                    os.remove(f"{self.path}.{i}")
                else:
                    os.rename(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            os.rename(self.path, f"{self.path}.1")
            self._openFile()
        finally:
            fcntl.flock(old.fileno(), fcntl.LOCK_UN)
            if old is not self._file:
                old.close()


threadable.synchronize(SharedLogFile)  # kazoo's threads log too, as with Twisted's LogFile


def file_observer(path, max_bytes, backups):
    """
    @return: an observer writing text to C{path} (a L{SharedLogFile}: other
        processes may append to it at the same time), rotated at
        C{max_bytes} with at most C{backups} old files kept.
    """
    directory, name = os.path.split(os.path.abspath(path))
    logfile = SharedLogFile(name, directory, rotateLength=max_bytes, maxRotatedFiles=backups)
    observer = _LevelFilter(textFileLogObserver(logfile))
    observer.logfile = logfile
    return observer


def configure_logging(logging_config, publisher=globalLogPublisher):
    """
    Apply the config's C{logging:} section: set the minimum level of
    metaproxy's observers (L{journal_text}, L{json_lines}, the file), bridge
    stdlib logging at that level, and add the file observer when C{file} is
    set. Calling it again replaces the previous file observer.

    @param logging_config: a L{metaproxy.config.LoggingConfig}.
    @param publisher: where events are published (the global publisher).
    @return: the file observer added, or L{None}.
    """
    level = level_named(logging_config.level)
    _level["value"] = level
    bridge_stdlib_logging(publisher, _STDLIB_LEVEL[level])
    if _file["observer"] is not None:
        _file["publisher"].removeObserver(_file["observer"])
        _file["logfile"].close()
        _file.update(observer=None, publisher=None, logfile=None, path=None)
    if not logging_config.file:
        return None
    observer = file_observer(logging_config.file, logging_config.max_bytes, logging_config.backups)
    publisher.addObserver(observer)
    _file.update(observer=observer, publisher=publisher, logfile=observer.logfile, path=logging_config.file)
    return observer

