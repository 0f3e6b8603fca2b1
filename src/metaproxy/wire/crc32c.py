# -*- test-case-name: metaproxy.test.test_wire_rdsn -*-
"""
CRC-32C (Castagnoli), as rDSN computes it for RDSN message headers and bodies.

Reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF: the
standard variant, whose check value for C{b"123456789"} is C{0xE3069283}.
Pure Python and table-driven (one table lookup per byte), so it runs on every
interpreter metaproxy supports without a compiled dependency.
"""

POLYNOMIAL = 0x82F63B78
CHECK_VALUE = 0xE3069283


def _make_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc32c(data, crc=0):
    """
    @param data: bytes-like.
    @param crc: the CRC of the bytes before C{data}, to continue a running
        CRC over several buffers (0 to start).
    @return: the CRC-32C of C{data} (continuing C{crc}), an unsigned 32-bit
        integer; C{crc32c(a + b) == crc32c(b, crc32c(a))}.
    """
    table = _TABLE
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
