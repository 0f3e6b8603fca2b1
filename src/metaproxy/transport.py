# -*- test-case-name: metaproxy.test.test_transport -*-
"""
TCP transport helpers shared by the client side (L{metaproxy.frontend}) and
the meta side (L{metaproxy.backend}): disable Nagle, and send a small frame
at once instead of through Twisted's write buffer.

C{transport.write} on a TCP connection only appends to a buffer and asks the
reactor for a writable event; the bytes leave on the next reactor iteration,
after two C{epoll_ctl} calls and one more event dispatch. For the proxy's
answers (one small frame per query, sockets almost never full) that costs
about as much as the C{send} itself. L{send_now} tries the C{send} first.
"""

import errno

from twisted.internet import tcp

_TRY_LATER = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS})


def send_now(transport, data):
    """
    Write C{data} to C{transport}, in order with everything written before.

    On a plain TCP connection (L{twisted.internet.tcp.Connection}) that is
    open and has nothing buffered, C{data} goes to the socket at once; what
    the kernel does not take is handed to C{transport.write}, and so is
    everything on any other transport (TLS, test transports) or on any error
    other than "try later" (Twisted then reports the error and closes the
    connection as it always does). Same promise as C{transport.write}: the
    bytes are sent in order, or the connection is lost.

    @param data: L{bytes}.
    """
    if (
        isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and not transport.TLS
    ):
        try:
            sent = transport.socket.send(data)
        except OSError as e:
            sent = 0
            if e.errno not in _TRY_LATER:
                transport.write(data)  # Twisted sees the same error and closes
                return
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def set_nodelay(transport):
    """
    Disable Nagle's algorithm on C{transport} if it is a TCP connection:
    query_cfg frames are small and latency-bound. Transports without
    C{setTcpNoDelay} (tests, UNIX sockets) and a socket that refuses are
    left as they are.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass
