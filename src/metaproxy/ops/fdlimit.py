# -*- test-case-name: metaproxy.test.test_operator -*-
"""
The open-file limit (C{RLIMIT_NOFILE}) against C{limits.max_connections}:
each client connection is a file descriptor, so a soft limit below the
connection limit makes accepts fail (and connections close) long before
C{max_connections} is reached. Checked and logged once at start-up, and
exported.
"""

try:
    import resource
except ImportError:  # not on every platform
    resource = None

from twisted.logger import Logger

log = Logger()

#: Descriptors metaproxy needs besides client connections: meta
#: connections, ZooKeeper, the admin listener and its clients, log files,
#: the interpreter's own.
RESERVED_FDS = 64


def read_nofile():
    """@return: C{(soft, hard)} of C{RLIMIT_NOFILE}; C{(-1, -1)} where it cannot be read."""
    if resource is None:
        return -1, -1
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def soft_fd_limit(read_limits=read_nofile):
    """
    @param read_limits: C{callable() -> (soft, hard)} (L{read_nofile}).
    @return: the soft limit, or L{None} when unknown or unlimited.
    """
    try:
        soft, _hard = read_limits()
    except (OSError, ValueError):
        return None
    unlimited = getattr(resource, "RLIM_INFINITY", -1)
    if soft == unlimited or soft < 0:
        return None
    return soft


def fd_limit_too_low(soft, max_connections):
    """
    @param soft: the soft limit (L{None}: unknown or unlimited).
    @param max_connections: C{limits.max_connections} (0: no limit).
    @return: whether C{soft} leaves fewer than C{max_connections} descriptors
        for clients after L{RESERVED_FDS}.
    """
    return soft is not None and max_connections > 0 and soft < max_connections + RESERVED_FDS


def check_fd_limit(max_connections, metrics=None, read_limits=read_nofile):
    """
    Warn once when the open-file limit is below what C{max_connections}
    needs, and export C{metaproxy_open_files_limit} and
    C{metaproxy_open_files_limit_too_low} (read at collection time).

    @return: whether the limit is too low.
    """
    soft = soft_fd_limit(read_limits)
    low = fd_limit_too_low(soft, max_connections)
    if low:
        log.warn(
            "the open-file limit (RLIMIT_NOFILE) is {soft}, below limits.max_connections {limit} + {reserved} "
            "for metas, ZooKeeper and logs: beyond about {usable} client connections, accepts will fail. "
            "Raise LimitNOFILE= in the systemd unit (or ulimit -n), or lower limits.max_connections",
            soft=soft, limit=max_connections, reserved=RESERVED_FDS, usable=max(soft - RESERVED_FDS, 0),
        )
    if metrics is not None:
        metrics.watch_gauges(
            "metaproxy_open_files_limit",
            "The soft open-file limit (RLIMIT_NOFILE) at start-up; -1 if unlimited or unknown.",
            None, lambda: -1.0 if soft is None else float(soft),
        )
        metrics.watch_gauges(
            "metaproxy_open_files_limit_too_low",
            "1 if the open-file limit is below limits.max_connections plus 64 reserved descriptors.",
            None, lambda: 1.0 if low else 0.0,
        )
    return low
