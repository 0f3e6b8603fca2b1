# -*- test-case-name: metaproxy.test.test_wire_querycfg -*-
"""
C{RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX}: the request and response structs.

Pegasus writes its base types as bare values under a STRUCT field header:
gpid and rpc_address as an i64, error_code as a string, host_port as
C{string, i16, i8} with no STOP. This module reads and writes them by hand.

Three ways to read a response, fastest first:
 - L{peek_result}: err, app_id, partition_count and (for a forward) the
   leader's address, without walking the partitions;
 - L{strip_host_port}: drop fields 9-11 (C{hp_*}) that every client released
   before 2024 cannot parse, returning the same bytes when there are none;
 - L{decode_result}: everything, as a L{QueryCfgResponse}.
"""

from typing import Optional
import ipaddress
import struct

import attrs

from metaproxy.wire import binary
from metaproxy.wire.binary import DecodeError, Reader
from metaproxy.wire.codes import ERR_FORWARD_TO_OTHERS, ERR_OK

QUERY_CFG = "RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX"
QUERY_CFG_ACK = QUERY_CFG + "_ACK"

_U64 = struct.Struct(">Q")
_GPID = struct.Struct(">ii")  # partition_index, app_id
_I32 = struct.Struct(">i")

_STRUCT, _LIST, _STRING, _I32T, _I64T, _BOOL, _STOP = (
    binary.STRUCT, binary.LIST, binary.STRING, binary.I32, binary.I64, binary.BOOL, binary.STOP,
)
_WRAPPER = binary.pack_field(_STRUCT, 0)
_ARGS_PREFIX = binary.pack_field(_STRUCT, 1) + binary.pack_field(_STRING, 1)
_INDICES_HEADER = binary.pack_field(_LIST, 2) + bytes([_I32T])
_PEEK_PREFIX = _WRAPPER + binary.pack_field(_STRUCT, 1)
_F2_I32 = binary.pack_field(_I32T, 2)
_F3_I32 = binary.pack_field(_I32T, 3)
_TWO_I32 = _I32


def rpc_address(host, port):
    """
    @param host: an IPv4 literal.
    @param port: the port.
    @return: the rDSN rpc_address value (unsigned 64-bit) for C{host:port}.
    """
    ip = int(ipaddress.IPv4Address(host))
    return (ip << 32) | ((port & 0xFFFF) << 16) | 1


def address_host_port(value):
    """
    @param value: an rpc_address value.
    @return: C{(ip, port)} for an IPv4 address, or L{None} for the invalid
        address (0) and any other type.
    """
    if value & 0x3 != 1:
        return None
    return str(ipaddress.IPv4Address(value >> 32)), (value >> 16) & 0xFFFF


@attrs.frozen
class HostPort:
    """An rDSN host_port: host name, port, type (1 = IPv4, 0 = invalid)."""

    host: str
    port: int
    type: int = 1


@attrs.frozen
class QueryCfgRequest:
    """A decoded query_cfg request: table name and requested partitions."""

    app_name: str
    partition_indices: tuple = ()


@attrs.frozen
class PartitionConfig:
    """
    One partition_configuration. Addresses are rpc_address values (see
    L{rpc_address}); the C{hp_*} fields are L{None} when absent on the wire.
    """

    app_id: int
    partition_index: int
    ballot: int = 0
    max_replica_count: int = 3
    primary: int = 0
    secondaries: tuple = ()
    last_drops: tuple = ()
    last_committed_decree: int = 0
    partition_flags: int = 0
    hp_primary: Optional[HostPort] = None
    hp_secondaries: Optional[tuple] = None
    hp_last_drops: Optional[tuple] = None


@attrs.frozen
class QueryCfgResponse:
    """A decoded query_cfg response."""

    err: str
    app_id: int = 0
    partition_count: int = 0
    is_stateful: bool = False
    partitions: tuple = ()


@attrs.frozen
class QueryCfgPeek:
    """
    The few fields a proxy needs from a response: the app-level error, the
    app id and partition count, the number of partitions in the list, and
    for C{ERR_FORWARD_TO_OTHERS} the leader (C{partitions[0].primary}, or
    L{None} when the follower does not know it).
    """

    err: str
    app_id: int
    partition_count: int
    leader: Optional[int] = None


# ----------------------------------------------------------------- requests


def encode_args(app_name, partition_indices=()):
    """@return: the args struct of a query_cfg request (what follows the message begin)."""
    idx = tuple(partition_indices)
    return b"".join(
        (
            binary.pack_field(_STRUCT, 1),
            binary.pack_field(_STRING, 1),
            binary.pack_string(app_name),
            binary.pack_field(_LIST, 2),
            binary.pack_list_header(_I32T, len(idx)),
            struct.pack(f">{len(idx)}i", *idx),
            b"\x00\x00",
        )
    )


def decode_args(args):
    """
    Decode a query_cfg args struct the way a meta server does: one field
    of any id holding the request struct, then STOP.

    @return: a L{QueryCfgRequest}. @raise DecodeError: if malformed.
    """
    # Fast path: the layout every client writes (name, then an empty or
    # short index list), read at fixed offsets; anything else goes the
    # general way below.
    if args[:6] == _ARGS_PREFIX and len(args) >= 10:
        n = _I32.unpack_from(args, 6)[0]
        end = 10 + n
        if 0 <= n and args[end : end + 4] == _INDICES_HEADER and len(args) >= end + 8:
            count = _I32.unpack_from(args, end + 4)[0]
            tail = end + 8 + 4 * count
            if 0 <= count <= 65536 and args[tail:] == b"\x00\x00":
                try:
                    name = args[10:end].decode("utf-8")
                except UnicodeDecodeError:
                    raise DecodeError("app_name is not UTF-8") from None
                indices = struct.unpack_from(f">{count}i", args, end + 8) if count else ()
                return QueryCfgRequest(name, indices)
    r = Reader(args)
    ttype, _ = r.field()
    if ttype != _STRUCT:
        raise DecodeError("query_cfg args: expected a request struct")
    app_name = ""
    indices = ()
    while True:
        ttype, fid = r.field()
        if ttype == _STOP:
            break
        if fid == 1 and ttype == _STRING:
            app_name = r.string()
        elif fid == 2 and ttype == _LIST:
            etype, n = r.list_header()
            if etype != _I32T:
                raise DecodeError("partition_indices: expected list<i32>")
            indices = struct.unpack(f">{n}i", r.take(4 * n))
        else:
            r.skip(ttype)
    if r.field()[0] != _STOP:
        raise DecodeError("query_cfg args: more than one field")
    return QueryCfgRequest(app_name, indices)


# ---------------------------------------------------------------- responses


def _pack_host_port(hp):
    return binary.pack_string(hp.host) + struct.pack(">hb", _i16(hp.port), hp.type)


def _i16(port):
    return port - 0x10000 if port >= 0x8000 else port


def _pack_addr_list(fid, addrs):
    return (
        binary.pack_field(_LIST, fid)
        + binary.pack_list_header(_STRUCT, len(addrs))
        + b"".join(_U64.pack(a) for a in addrs)
    )


def _pack_hp_list(fid, hps):
    return (
        binary.pack_field(_LIST, fid)
        + binary.pack_list_header(_STRUCT, len(hps))
        + b"".join(_pack_host_port(h) for h in hps)
    )


def _pack_partition(pc):
    parts = [
        binary.pack_field(_STRUCT, 1), _GPID.pack(pc.partition_index, pc.app_id),
        binary.pack_field(_I64T, 2), binary.pack_i64(pc.ballot),
        binary.pack_field(_I32T, 3), _I32.pack(pc.max_replica_count),
        binary.pack_field(_STRUCT, 4), _U64.pack(pc.primary),
        _pack_addr_list(5, pc.secondaries),
        _pack_addr_list(6, pc.last_drops),
        binary.pack_field(_I64T, 7), binary.pack_i64(pc.last_committed_decree),
        binary.pack_field(_I32T, 8), _I32.pack(pc.partition_flags),
    ]
    if pc.hp_primary is not None:
        parts += (binary.pack_field(_STRUCT, 9), _pack_host_port(pc.hp_primary))
    if pc.hp_secondaries is not None:
        parts.append(_pack_hp_list(10, pc.hp_secondaries))
    if pc.hp_last_drops is not None:
        parts.append(_pack_hp_list(11, pc.hp_last_drops))
    parts.append(b"\x00")
    return b"".join(parts)


def encode_response(resp):
    """@return: the query_cfg_response struct bytes, as thrift's C++ code writes them."""
    return b"".join(
        (
            binary.pack_field(_STRUCT, 1), binary.pack_string(resp.err),
            binary.pack_field(_I32T, 2), _I32.pack(resp.app_id),
            binary.pack_field(_I32T, 3), _I32.pack(resp.partition_count),
            binary.pack_field(_BOOL, 4), b"\x01" if resp.is_stateful else b"\x00",
            binary.pack_field(_LIST, 5), binary.pack_list_header(_STRUCT, len(resp.partitions)),
            b"".join(_pack_partition(p) for p in resp.partitions),
            b"\x00",
        )
    )


def encode_result(resp):
    """@return: a reply body: the result wrapper (field 0) holding C{resp}."""
    return _WRAPPER + encode_response(resp) + b"\x00"


def error_result(err):
    """
    @return: a reply body carrying only an app-level error, as a meta
        server sends for e.g. C{ERR_OBJECT_NOT_FOUND}.
    """
    return encode_result(QueryCfgResponse(err))


def forward_result(leader):
    """
    @param leader: the leader's rpc_address value, or L{None} if unknown.
    @return: the body a follower meta sends: C{ERR_FORWARD_TO_OTHERS} with
        the leader in C{partitions[0].primary} and every other field at its
        default.
    """
    parts = () if leader is None else (PartitionConfig(0, 0, max_replica_count=0, primary=leader),)
    return encode_result(QueryCfgResponse(ERR_FORWARD_TO_OTHERS, partitions=parts))


def _read_host_port(r):
    host = r.string()
    port = r.i16() & 0xFFFF
    t = r.i8()
    return HostPort(host, port, t)


def _read_addr_list(r, reader):
    etype, n = r.list_header()
    if etype != _STRUCT:
        raise DecodeError("address list: expected STRUCT elements")
    return tuple(reader(r) for _ in range(n))


def _read_u64(r):
    return _U64.unpack(r.take(8))[0]


def _read_partition(r):
    f = {}
    while True:
        ttype, fid = r.field()
        if ttype == _STOP:
            break
        if fid == 1 and ttype == _STRUCT:
            f["partition_index"], f["app_id"] = _GPID.unpack(r.take(8))
        elif fid == 2 and ttype == _I64T:
            f["ballot"] = r.i64()
        elif fid == 3 and ttype == _I32T:
            f["max_replica_count"] = r.i32()
        elif fid == 4 and ttype == _STRUCT:
            f["primary"] = _read_u64(r)
        elif fid in (5, 6) and ttype == _LIST:
            f["secondaries" if fid == 5 else "last_drops"] = _read_addr_list(r, _read_u64)
        elif fid == 7 and ttype == _I64T:
            f["last_committed_decree"] = r.i64()
        elif fid == 8 and ttype == _I32T:
            f["partition_flags"] = r.i32()
        elif fid == 9 and ttype == _STRUCT:
            f["hp_primary"] = _read_host_port(r)
        elif fid in (10, 11) and ttype == _LIST:
            key = "hp_secondaries" if fid == 10 else "hp_last_drops"
            f[key] = _read_addr_list(r, _read_host_port)
        else:
            r.skip(ttype)
    f.setdefault("app_id", 0)
    f.setdefault("partition_index", 0)
    return PartitionConfig(**f)


def _enter_result(r):
    ttype, fid = r.field()
    if ttype != _STRUCT or fid != 0:
        raise DecodeError(f"result: expected success field 0, got type {ttype} id {fid}")


def decode_result(body):
    """
    Decode a whole reply body.

    @return: a L{QueryCfgResponse}. @raise DecodeError: if malformed.
    """
    r = Reader(body)
    _enter_result(r)
    err, app_id, count, stateful, parts = ERR_OK, 0, 0, False, ()
    while True:
        ttype, fid = r.field()
        if ttype == _STOP:
            break
        if fid == 1 and ttype == _STRUCT:
            err = r.string()
        elif fid == 2 and ttype == _I32T:
            app_id = r.i32()
        elif fid == 3 and ttype == _I32T:
            count = r.i32()
        elif fid == 4 and ttype == _BOOL:
            stateful = r.bool()
        elif fid == 5 and ttype == _LIST:
            parts = _read_addr_list(r, _read_partition)
        else:
            r.skip(ttype)
    if r.field()[0] != _STOP or r.remaining():
        raise DecodeError("result: trailing data")
    return QueryCfgResponse(err, app_id, count, stateful, parts)


def peek_result(body):
    """
    Read the app-level error, app id and partition count, and for a
    forward the leader address, without decoding the partitions.

    @return: a L{QueryCfgPeek}. @raise DecodeError: if malformed.
    """
    # Fast path: the layout every meta server writes (wrapper, err, app_id,
    # partition_count, in field order) read at fixed offsets.
    if body[:6] == _PEEK_PREFIX:
        n = _I32.unpack_from(body, 6)[0] if len(body) >= 10 else -1
        end = 10 + n
        if (
            0 <= n <= 64
            and len(body) >= end + 14
            and body[end : end + 3] == _F2_I32
            and body[end + 7 : end + 10] == _F3_I32
        ):
            err = body[10:end].decode("ascii", "replace")
            if err != ERR_FORWARD_TO_OTHERS:
                app_id, count = _TWO_I32.unpack_from(body, end + 3)[0], _I32.unpack_from(body, end + 10)[0]
                return QueryCfgPeek(err, app_id, count, None)
    r = Reader(body)
    _enter_result(r)
    err, app_id, count = ERR_OK, 0, 0
    while True:
        ttype, fid = r.field()
        if ttype == _STOP:
            break
        if fid == 1 and ttype == _STRUCT:
            err = r.string()
        elif fid == 2 and ttype == _I32T:
            app_id = r.i32()
        elif fid == 3 and ttype == _I32T:
            count = r.i32()
        elif fid == 5 and ttype == _LIST:
            if err != ERR_FORWARD_TO_OTHERS:
                break
            etype, n = r.list_header()
            if etype != _STRUCT:
                raise DecodeError("partitions: expected STRUCT elements")
            leader = _read_partition(r).primary if n else None
            return QueryCfgPeek(err, app_id, count, leader or None)
        else:
            r.skip(ttype)
    return QueryCfgPeek(err, app_id, count, None)


_HP_PRIMARY = binary.pack_field(binary.STRUCT, 9)
_HP_SECONDARIES = binary.pack_field(binary.LIST, 10)
_HP_LAST_DROPS = binary.pack_field(binary.LIST, 11)


def _skip_host_port(r):
    r.binary()
    r.take(3)


def _walk_partition(r, cuts):
    """Skip one partition_configuration, recording the spans of fields 9-11."""
    while True:
        start = r.pos
        ttype, fid = r.field()
        if ttype == _STOP:
            return
        if fid in (1, 4) and ttype == _STRUCT:
            r.take(8)
        elif fid in (5, 6) and ttype == _LIST:
            etype, n = r.list_header()
            if etype != _STRUCT:
                raise DecodeError("address list: expected STRUCT elements")
            r.take(8 * n)
        elif not _cut_host_port(r, ttype, fid, start, cuts):
            r.skip(ttype)


def _cut_host_port(r, ttype, fid, start, cuts):
    """
    Skip field C{fid} (its header read from C{start}) and record its span
    if it is C{hp_*}-shaped (9: a host_port, 10 or 11: a list of them).

    @return: whether it was.
    """
    if fid == 9 and ttype == _STRUCT:
        _skip_host_port(r)
    elif fid in (10, 11) and ttype == _LIST:
        etype, n = r.list_header()
        if etype != _STRUCT:
            raise DecodeError("host_port list: expected STRUCT elements")
        for _ in range(n):
            _skip_host_port(r)
    else:
        return False
    cuts.append((start, r.pos))
    return True


def strip_host_port(body):
    """
    Remove the C{hp_primary}, C{hp_secondaries} and C{hp_last_drops} fields
    (ids 9-11) from every partition, and any field of that shape at the
    top level of the response too. Clients generated before 2024 cannot
    skip them (their first byte reads as STOP) and desynchronise.

    @return: C{body} itself when it has no such field, else the new bytes.
    @raise DecodeError: if C{body} is malformed.
    """
    if _HP_PRIMARY not in body and _HP_SECONDARIES not in body and _HP_LAST_DROPS not in body:
        # None of the three field headers occurs anywhere, so no such field
        # exists (a C-speed scan; the walk below is ~100x slower).
        return body
    cuts = _hp_cuts_fast(body)
    if cuts is None:
        cuts = _hp_cuts_walk(body)
    if not cuts:
        return body
    out = []
    pos = 0
    for start, end in cuts:
        out.append(body[pos:start])
        pos = end
    out.append(body[pos:])
    return b"".join(out)


def _hp_cuts_walk(body):
    """@return: the C{(start, end)} spans of fields 9-11, by a general walk."""
    r = Reader(body)
    _enter_result(r)
    cuts = []
    while True:
        start = r.pos
        ttype, fid = r.field()
        if ttype == _STOP:
            break
        if fid == 1 and ttype == _STRUCT:
            r.binary()
        elif fid == 5 and ttype == _LIST:
            etype, n = r.list_header()
            if etype != _STRUCT:
                raise DecodeError("partitions: expected STRUCT elements")
            for _ in range(n):
                _walk_partition(r, cuts)
        elif not _cut_host_port(r, ttype, fid, start, cuts):
            r.skip(ttype)  # an hp_*-shaped field outside the partitions is cut as well
    return cuts


# The layout a meta server writes (every field, in id order), read at
# computed offsets by _hp_cuts_fast.
_TOP = struct.Struct(">3s3si")  # wrapper, err header, err length
_TOP_EXPECTED = (_WRAPPER, binary.pack_field(_STRUCT, 1))
_TOP_TAIL = struct.Struct(">3s4x3s4x3sx4si")  # app_id, partition_count, is_stateful, partitions
_TOP_TAIL_EXPECTED = (
    binary.pack_field(_I32T, 2), binary.pack_field(_I32T, 3), binary.pack_field(_BOOL, 4),
    binary.pack_field(_LIST, 5) + bytes([_STRUCT]),
)
_PC_HEAD = struct.Struct(">3s8x3s8x3s4x3s8x4si")  # fields 1-4, then field 5's list header
_PC_HEAD_EXPECTED = (
    binary.pack_field(_STRUCT, 1), binary.pack_field(_I64T, 2), binary.pack_field(_I32T, 3),
    binary.pack_field(_STRUCT, 4), binary.pack_field(_LIST, 5) + bytes([_STRUCT]),
)
_PC_DROPS = struct.Struct(">4si")
_PC_DROPS_HEADER = binary.pack_field(_LIST, 6) + bytes([_STRUCT])
_PC_TAIL = struct.Struct(">3s8x3s4x")  # fields 7 and 8
_PC_TAIL_EXPECTED = (binary.pack_field(_I64T, 7), binary.pack_field(_I32T, 8))
_HP_SECONDARIES_LIST = _HP_SECONDARIES + bytes([_STRUCT])
_HP_LAST_DROPS_LIST = _HP_LAST_DROPS + bytes([_STRUCT])


def _hp_cuts_fast(body):
    """
    @return: the C{(start, end)} spans of fields 9-11 when C{body} has the
        exact layout a meta server writes, else L{None} (use the walk).
    """
    i32 = _I32.unpack_from
    try:
        wrapper, f1, elen = _TOP.unpack_from(body, 0)
        if (wrapper, f1) != _TOP_EXPECTED or elen < 0:
            return None
        p = 10 + elen
        tail = _TOP_TAIL.unpack_from(body, p)
        if tail[:4] != _TOP_TAIL_EXPECTED or tail[4] < 0:
            return None
        p += 26
        cuts = []
        for _ in range(tail[4]):
            head = _PC_HEAD.unpack_from(body, p)
            if head[:5] != _PC_HEAD_EXPECTED or head[5] < 0:
                return None
            p += 48 + 8 * head[5]
            drops_header, ndrops = _PC_DROPS.unpack_from(body, p)
            if drops_header != _PC_DROPS_HEADER or ndrops < 0:
                return None
            p += 8 + 8 * ndrops
            if _PC_TAIL.unpack_from(body, p) != _PC_TAIL_EXPECTED:
                return None
            p += 18
            start = p
            if body[p : p + 3] == _HP_PRIMARY:
                slen = i32(body, p + 3)[0]
                if slen < 0:
                    return None
                p += 10 + slen
            for list_header in (_HP_SECONDARIES_LIST, _HP_LAST_DROPS_LIST):
                if body[p : p + 4] == list_header:
                    count = i32(body, p + 4)[0]
                    if count < 0:
                        return None
                    p += 8
                    for _ in range(count):
                        slen = i32(body, p)[0]
                        if slen < 0:
                            return None
                        p += 7 + slen
            if body[p : p + 1] != b"\x00":
                return None
            if p != start:
                cuts.append((start, p))
            p += 1
        if body[p:] != b"\x00\x00":
            return None
        return cuts
    except struct.error:
        return None
