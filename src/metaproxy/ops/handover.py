# -*- test-case-name: metaproxy.test.test_handover -*-
"""
The hand-over channel of a hot upgrade: records with file descriptors,
both ways, over a connected Unix stream socket (C{SCM_RIGHTS}).

A record is C{!II} (header length, payload length), a JSON object header
and an opaque payload (for a client connection: the bytes of an incomplete
frame the old process had already read). The header's C{"fds"} says how
many descriptors belong to the record; they travel in the ancillary data
of the record's bytes (or earlier ones), in order, so the receiver keeps
them in a FIFO and hands a record its descriptors once it is complete.

Bounds: a header of at most 64 KiB, a payload of at most 64 MiB, at most
1 024 descriptors received and not yet claimed; more is a broken channel
(closed, every unclaimed descriptor closed, nothing leaks).
"""

import json
import os
import struct

from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

_HEAD = struct.Struct("!II")
MAX_HEADER = 64 << 10
MAX_PAYLOAD = 64 << 20
MAX_UNCLAIMED_FDS = 1024
#: The environment variable naming the channel's descriptor in the new process.
ENV_FD = "METAPROXY_HANDOVER_FD"


class ChannelError(Exception):
    """The peer sent something that is not a record."""


def encode_record(header, payload=b""):
    """@return: the bytes of one record (C{header} is a JSON-able dict)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER or len(payload) > MAX_PAYLOAD:
        raise ValueError("hand-over record too large")
    return _HEAD.pack(len(head), len(payload)) + head + payload


@implementer(IFileDescriptorReceiver)
class HandoverChannel(Protocol):
    """
    One end of the hand-over channel.

    @param on_record: C{callable(header, payload, fds)} for each record;
        it owns C{fds} (must adopt or close them, also when it raises: the
        channel never closes a descriptor it has handed on).
    @param on_lost: C{callable(reason)} once the channel is closed.
    """

    def __init__(self, on_record, on_lost):
        self._on_record = on_record
        self._on_lost = on_lost
        self._buf = bytearray()
        self._fds = []
        self.broken = False

    def send(self, header, payload=b"", fds=()):
        """
        Queue one record with C{fds} (the descriptors stay open here: close
        them only once the peer confirmed it has them).
        """
        for fd in fds:
            self.transport.sendFileDescriptor(fd)
        self.transport.write(encode_record(dict(header, fds=len(fds)), payload))

    def fileDescriptorReceived(self, descriptor):
        """Keep a received descriptor until its record is complete."""
        self._fds.append(descriptor)
        if len(self._fds) > MAX_UNCLAIMED_FDS:
            self._break(f"more than {MAX_UNCLAIMED_FDS} descriptors without their records")

    def dataReceived(self, data):
        """Parse complete records and hand each its descriptors."""
        if self.broken:
            return
        buf = self._buf
        buf += data
        while len(buf) >= _HEAD.size:
            head_len, payload_len = _HEAD.unpack_from(buf)
            if head_len > MAX_HEADER or payload_len > MAX_PAYLOAD:
                self._break(f"record of {head_len}+{payload_len} bytes is too large")
                return
            end = _HEAD.size + head_len + payload_len
            if len(buf) < end:
                return
            try:
                header = json.loads(bytes(buf[_HEAD.size:_HEAD.size + head_len]))
                count = int(header.get("fds", 0))
            except (ValueError, AttributeError, TypeError) as e:
                self._break(f"unreadable record header: {e}")
                return
            if count < 0 or count > len(self._fds):
                self._break(f"record claims {count} descriptors, {len(self._fds)} received")
                return
            payload = bytes(buf[_HEAD.size + head_len:end])
            del buf[:end]
            fds, self._fds = self._fds[:count], self._fds[count:]
            try:
                self._on_record(header, payload, fds)
            except Exception:
                log.failure("handling hand-over record {type} failed", type=header.get("type"))

    def _break(self, why):
        self.broken = True
        log.error("hand-over channel broken: {why}", why=why)
        _close_all(self._fds)
        self._fds = []
        self.transport.loseConnection()

    def connectionLost(self, reason):
        """Close unclaimed descriptors and tell C{on_lost}."""
        _close_all(self._fds)
        self._fds = []
        self.broken = True
        self._on_lost(reason)


def _close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class _Given(Factory):
    """Builds one given protocol (to adopt a socket with a known protocol)."""

    def __init__(self, protocol):
        self.protocol_instance = protocol

    def buildProtocol(self, addr):
        return self.protocol_instance


def adopt_channel(reactor, fd, channel):
    """
    Run C{channel} on the connected Unix socket C{fd} (which is then
    closed here: the reactor works on its own duplicate).
    """
    import socket

    os.set_blocking(fd, False)
    try:
        reactor.adoptStreamConnection(fd, socket.AF_UNIX, _Given(channel))
    finally:
        os.close(fd)
    return channel


class Capture(Factory):
    """
    Wraps a factory and remembers the protocol it built last (for
    L{IReactorSocket.adoptStreamConnection}, which does not return it).
    """

    def __init__(self, factory):
        self.factory = factory
        self.built = None

    def buildProtocol(self, addr):
        self.built = self.factory.buildProtocol(addr)
        return self.built
