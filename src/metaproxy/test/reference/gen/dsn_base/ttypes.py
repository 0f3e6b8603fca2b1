"""
Hand-written (NOT generated): the rDSN base types for the generated
reference code. Pegasus writes each as a bare value under a STRUCT field
header (pegasus-protocol.md section 4.1), so they cannot be generated.
"""

import ipaddress


class _Base:
    thrift_spec = ()

    def __eq__(self, other):
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __repr__(self):
        return f"{type(self).__name__}({self.__dict__})"


class gpid(_Base):
    """i64: partition_index in the high 32 bits, app_id in the low 32."""

    def __init__(self, app_id=0, partition_index=0):
        self.app_id = app_id
        self.partition_index = partition_index

    def read(self, iprot):
        v = iprot.readI64() & 0xFFFFFFFFFFFFFFFF
        self.partition_index = _signed32(v >> 32)
        self.app_id = _signed32(v & 0xFFFFFFFF)

    def write(self, oprot):
        v = ((self.partition_index & 0xFFFFFFFF) << 32) | (self.app_id & 0xFFFFFFFF)
        oprot.writeI64(_signed64(v))


class rpc_address(_Base):
    """i64: IPv4 << 32 | port << 16 | type (1 = IPv4); 0 is invalid."""

    def __init__(self, address=0):
        self.address = address

    @classmethod
    def of(cls, host, port):
        return cls((int(ipaddress.IPv4Address(host)) << 32) | (port << 16) | 1)

    def read(self, iprot):
        self.address = iprot.readI64() & 0xFFFFFFFFFFFFFFFF

    def write(self, oprot):
        oprot.writeI64(_signed64(self.address))


class error_code(_Base):
    """A bare string: the error name."""

    def __init__(self, name="ERR_OK"):
        self.name = name

    def read(self, iprot):
        self.name = iprot.readString()

    def write(self, oprot):
        oprot.writeString(self.name)


class host_port(_Base):
    """string host, i16 port, i8 type, no STOP."""

    def __init__(self, host="", port=0, type=1):
        self.host = host
        self.port = port
        self.type = type

    def read(self, iprot):
        self.host = iprot.readString()
        self.port = iprot.readI16() & 0xFFFF
        self.type = iprot.readByte()

    def write(self, oprot):
        oprot.writeString(self.host)
        oprot.writeI16(self.port - 0x10000 if self.port >= 0x8000 else self.port)
        oprot.writeByte(self.type)


class blob(_Base):
    """A bare binary string."""

    def __init__(self, data=b""):
        self.data = data

    def read(self, iprot):
        self.data = iprot.readBinary()

    def write(self, oprot):
        oprot.writeBinary(self.data)


def _signed32(v):
    return v - (1 << 32) if v >= (1 << 31) else v


def _signed64(v):
    return v - (1 << 64) if v >= (1 << 63) else v
