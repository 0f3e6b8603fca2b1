# -*- test-case-name: metaproxy.test.test_families -*-
"""
Which client family sent a request, and how long metaproxy may take to
answer it so that the client is never worse off than going direct.

Every THFT client but Java 2.x sends a v0 header, and only some tell the
truth in its C{client_timeout} (read from the clients' public sources and
captured frames; C{docs/clients.rst} has the table):

 - B{Java 2.x} (and Scala): a v1 header with the true timeout.
 - B{Java 1.x >= 1.11.4}: v0, gpid (-1, -1), thread hash -7921 (-7920 in
   some builds), the configured operation timeout.
 - B{Java 1.x 1.7.1-1.11.3}: the same header with timeout 0, whatever the
   application configured (1000 ms by default, 20 s seen).
 - B{Go}: v0, everything 0 but the timeout, which is
   C{uint32(deadline_ns - now_ns) / 1e6}: truncated to 32 bits before the
   division, so a deadline beyond 4.29 s wraps (5 s -> ~705 ms, 10 s ->
   ~1410 ms, 4.3 s -> ~5 ms). The value never exceeds 4295 and says
   nothing about the true deadline.
 - B{pypegasus3 and NodeJS}: v0, everything 0 (timeout too). pypegasus3
   gives up after 2 s (its timer starts once connected); NodeJS retries on
   the same connection after C{ERR_SERVICE_NOT_ACTIVE}.
 - B{RDSN} (C++ client, shell): the task's true timeout.

The budget rule per family:

 - a truthful timeout T (Java 2.x, Java 1.x >= 1.11.4, RDSN, any other
   client giving a sane value): T minus the larger of C{margin_ratio} x T
   and C{margin_min}, minus C{new_connection_margin} for the first request
   on a connection (a Java client's timer starts before it connects: its
   query reached the proxy up to 128 ms late), at least T/2, so the
   retryable error arrives before the client's own timer fires;
 - an untrusted timeout (Go's wrapped value, Java 1.x's 0): C{untrusted}
   seconds. Go treats C{ERR_SERVICE_NOT_ACTIVE} as final and Java 1.x
   times out on its own, so answering before the true deadline can only
   cut an answer direct would have given; answering after it is harmless
   (the client has moved on and drops the reply);
 - a 0 with an all-zero header (pypegasus3, NodeJS): C{client_default},
   which must leave pypegasus3 time to read the retryable error before its
   2 s (NodeJS's retries are answered by the query still running, see
   L{metaproxy.frontend.resolver}).

Every budget is capped at C{maximum}.
"""

import attrs

from metaproxy.backend.pools import MAX_SANE_CLIENT_TIMEOUT_MS, answer_budget

#: Family names, as metrics label them.
JAVA2 = "java2"
JAVA1 = "java1"
JAVA1_ZERO = "java1_zero_timeout"
GO = "go"
ZERO = "zero_timeout"  # pypegasus3, NodeJS
RDSN = "rdsn"
OTHER = "other"

FAMILIES = (JAVA2, JAVA1, JAVA1_ZERO, GO, ZERO, RDSN, OTHER)

#: Suspicious header reasons, as metrics label them.
NEGATIVE_TIMEOUT = "negative_timeout"
HUGE_TIMEOUT = "huge_timeout"
JAVA1_NO_TIMEOUT = "java1_zero_timeout"
V1_NO_TIMEOUT = "v1_zero_timeout"
UNKNOWN_SHAPE = "unknown_v0_shape"

#: Java 1.x's meta header: gpid (-1, -1) and this thread hash (the issue's
#: captures show -7921; C{app_id * 7919 + partition_index} gives -7920).
JAVA1_THREAD_HASHES = frozenset((-7921, -7920))

#: Go's wrapped value is at most C{(2**32 - 1) // 10**6} ms.
GO_MAX_TIMEOUT_MS = 4295


def classify(header):
    """
    Tell which client family a request header comes from.

    @param header: a L{metaproxy.wire.frame.RequestHeader} (THFT: it has a
        C{version}) or a L{metaproxy.wire.rdsn.RdsnHeader} (no C{version}).
    @return: C{(family, suspicious)}: one of L{FAMILIES} and a reason
        (one of the module's suspicious-header names) or L{None}.
    """
    timeout = header.client_timeout
    if timeout < 0:
        suspicious = NEGATIVE_TIMEOUT
    elif timeout > MAX_SANE_CLIENT_TIMEOUT_MS:
        suspicious = HUGE_TIMEOUT
    else:
        suspicious = None
    version = getattr(header, "version", None)
    if version is None:
        return RDSN, suspicious
    if version == 1:
        if timeout == 0:
            return JAVA2, V1_NO_TIMEOUT
        return JAVA2, suspicious
    app_id = header.app_id
    pidx = header.partition_index
    if app_id == -1 and pidx == -1 and header.thread_hash in JAVA1_THREAD_HASHES:
        if timeout == 0:
            return JAVA1_ZERO, JAVA1_NO_TIMEOUT
        return JAVA1, suspicious
    if app_id == 0 and pidx == 0 and header.thread_hash == 0 and header.partition_hash == 0:
        if timeout == 0:
            return ZERO, None
        if 0 < timeout <= GO_MAX_TIMEOUT_MS:
            return GO, None
    return OTHER, suspicious or UNKNOWN_SHAPE


@attrs.frozen
class FamilyBudgets:
    """
    The answer budget of a request, by its client family (see the module
    docstring for the rule).

    @ivar default: seconds for an all-zero header (C{timeouts.client_default}).
    @ivar maximum: the cap of any budget (C{timeouts.client_max}).
    @ivar untrusted: seconds for a timeout known not to be the client's
        (C{timeouts.untrusted}).
    @ivar margin_ratio: see L{metaproxy.backend.pools.answer_budget}.
    @ivar margin_min: see L{metaproxy.backend.pools.answer_budget}.
    @ivar new_connection_margin: seconds kept besides for the first request
        on a connection (C{timeouts.new_connection_margin}).
    """

    default: float = 1.8
    maximum: float = 30.0
    untrusted: float = 30.0
    margin_ratio: float = 0.1
    margin_min: float = 0.1
    new_connection_margin: float = 0.2

    def budget(self, family, client_timeout_ms, new_connection=False):
        """
        @param family: what L{classify} said.
        @param client_timeout_ms: the header's timeout.
        @param new_connection: whether this is the first request seen on
            its connection.
        @return: seconds this request may take to be answered.
        """
        if family == GO or family == JAVA1_ZERO:
            return min(self.untrusted, self.maximum)
        extra = self.new_connection_margin if new_connection else 0.0
        return answer_budget(
            client_timeout_ms, self.default, self.maximum, self.margin_ratio, self.margin_min, extra
        )

