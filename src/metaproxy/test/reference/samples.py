# -*- test-case-name: metaproxy.test.test_wire_golden -*-
"""
Shared test data for the wire tests and the codec benchmark: the hex dumps
of pegasus-protocol.md section 7, sample responses, and helpers that run
the thrift-generated reference code (see README).
"""

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.transport.TTransport import TMemoryBuffer

from metaproxy.test.reference.gen.dsn_base import ttypes as base
from metaproxy.test.reference.gen.pegasus_ref import ttypes as ref
from metaproxy.wire import querycfg

A = querycfg.rpc_address


def hx(text):
    """@return: the bytes spelled by hex digits C{text} (whitespace ignored)."""
    return bytes.fromhex("".join(text.split()))


#: ex1: THFT v0 query_cfg for table "temp", seqid 1, Go-style.
EX1 = hx("""
54 48 46 54 00 00 00 00 00 00 00 30 00 00 00 00 00 00 00 4a 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 80 01 00 01 00 00 00 26 52 50 43 5f 43 4d 5f 51
55 45 52 59 5f 50 41 52 54 49 54 49 4f 4e 5f 43 4f 4e 46 49 47 5f 42 59 5f 49 4e 44 45 58 00 00
00 01 0c 00 01 0b 00 01 00 00 00 04 74 65 6d 70 0f 00 02 08 00 00 00 00 00 00""")

#: ex1 bytes 24-39 as Java 1.x writes them.
EX1_JAVA1_ROUTING = hx("ff ff ff ff ff ff ff ff 00 00 03 e8 ff ff e1 10")

#: ex2: THFT v1 query_cfg, Java 2.x meta (-1, -1, 5000, 0, false).
EX2 = hx("""
54 48 46 54 00 00 00 01 00 00 00 25 00 00 00 4a 08 00 01 ff ff ff ff 08 00 02 ff ff ff ff 08 00
03 00 00 13 88 0a 00 04 00 00 00 00 00 00 00 00 02 00 05 00 00 80 01 00 01 00 00 00 26 52 50 43
5f 43 4d 5f 51 55 45 52 59 5f 50 41 52 54 49 54 49 4f 4e 5f 43 4f 4e 46 49 47 5f 42 59 5f 49 4e
44 45 58 00 00 00 01 0c 00 01 0b 00 01 00 00 00 04 74 65 6d 70 0f 00 02 08 00 00 00 00 00 00""")

#: ex3 up to the start of partition 0 (offset 0x6e).
EX3_HEAD = (
    hx("00 00 01 94 00 00 00 06") + b"ERR_OK" + hx("80 01 00 02 00 00 00 2a")
    + b"RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX_ACK" + hx("00 00 00 01 0c 00 00")
    + hx("0c 00 01 00 00 00 06 45 52 52 5f 4f 4b 08 00 02 00 00 00 02 08 00 03 00 00 00 02")
    + hx("02 00 04 01 0f 00 05 0c 00 00 00 02")
)

#: ex3 partition 0 (offsets 0x6e-0x100), as annotated in the doc.
EX3_PARTITION0 = hx("""
0c 00 01 00 00 00 00 00 00 00 02  0a 00 02 00 00 00 00 00 00 00 03  08 00 03 00 00 00 03
0c 00 04 0a 00 00 01 87 f1 00 01
0f 00 05 0c 00 00 00 02 0a 00 00 02 87 f1 00 01 0a 00 00 03 87 f1 00 01
0f 00 06 0c 00 00 00 00  0a 00 07 00 00 00 00 00 00 00 64  08 00 08 00 00 00 00
0c 00 09 00 00 00 05 6e 6f 64 65 31 87 f1 01
0f 00 0a 0c 00 00 00 02 00 00 00 05 6e 6f 64 65 32 87 f1 01 00 00 00 05 6e 6f 64 65 33 87 f1 01
0f 00 0b 0c 00 00 00 00 00""")

#: ex4: ERR_HANDLER_NOT_FOUND for RPC_FOO, seqid 7, no body.
EX4 = (
    hx("00 00 00 34 00 00 00 15") + b"ERR_HANDLER_NOT_FOUND" + hx("80 01 00 02 00 00 00 0b")
    + b"RPC_FOO_ACK" + hx("00 00 00 07")
)

#: ex5: the reply body after the seqid for a forward to 10.0.0.9:34601
#: (without the optional hp_primary).
EX5_BODY = (
    hx("0c 00 00 0c 00 01 00 00 00 15") + b"ERR_FORWARD_TO_OTHERS"
    + hx("08 00 02 00000000 08 00 03 00000000 02 00 04 00 0f 00 05 0c 00000001")
    + hx("0c 00 01 0000000000000000 0a 00 02 0000000000000000 08 00 03 00000000")
    + hx("0c 00 04 0a00000987290001 0f 00 05 0c 00000000 0f 00 06 0c 00000000")
    + hx("0a 00 07 0000000000000000 08 00 08 00000000 00 00 00")
)
#: ex5: what master servers add before the partition's STOP.
EX5_HP_PRIMARY = hx("0c 00 09 00 00 00 05") + b"meta2" + hx("87 29 01")

#: ex6: a Java 2.x negotiation request (v1, meta 0/0/10000, seqid 0).
EX6_REQUEST = (
    hx("54 48 46 54 00000001 00000025 0000002e")
    + hx("08 00 01 00000000 08 00 02 00000000 08 00 03 00002710 0a 00 04 0000000000000000 02 00 05 00 00")
    + hx("80 01 00 01 0000000f") + b"RPC_NEGOTIATION" + hx("00000000")
    + hx("0c 00 01 08 00 01 00000001 0c 00 02 00000000 00 00")
)
#: ex6: the SASL_AUTH_DISABLE reply (64 bytes).
EX6_REPLY = hx("""
00 00 00 40 00 00 00 06 45 52 52 5f 4f 4b 80 01 00 02 00 00 00 13 52 50 43 5f 4e 45 47 4f 54 49
41 54 49 4f 4e 5f 41 43 4b 00 00 00 00 0c 00 00 08 00 01 00 00 00 09 0c 00 02 00 00 00 00 00 00""")


def ex3_response():
    """
    @return: the L{querycfg.QueryCfgResponse} of ex3 (partition 1's
        secondaries are not in the doc; 10.0.0.1 and 10.0.0.3 are assumed).
    """

    def part(pidx, ballot, primary, secondaries, lcd, hp_primary, hp_secondaries):
        return querycfg.PartitionConfig(
            2, pidx, ballot, 3, A(primary, 34801), tuple(A(s, 34801) for s in secondaries), (), lcd, 0,
            querycfg.HostPort(hp_primary, 34801),
            tuple(querycfg.HostPort(h, 34801) for h in hp_secondaries), (),
        )

    return querycfg.QueryCfgResponse(
        "ERR_OK", 2, 2, True,
        (
            part(0, 3, "10.0.0.1", ("10.0.0.2", "10.0.0.3"), 100, "node1", ("node2", "node3")),
            part(1, 5, "10.0.0.2", ("10.0.0.1", "10.0.0.3"), 200, "node2", ("node1", "node3")),
        ),
    )


def big_response(n=256, with_hp=True):
    """
    @return: a response of C{n} partitions x 3 replicas (a primary and two
        secondaries), with or without the hp_* fields.
    """
    return querycfg.QueryCfgResponse(
        "ERR_OK", 7, n, True,
        tuple(
            querycfg.PartitionConfig(
                7, i, 10 + i, 3, A("10.1.%d.1" % (i % 250), 34801 + i % 3),
                (A("10.2.0.1", 34802), A("192.168.1.1", 65535)), (A("10.3.0.1", 1),), 1000 * i, i % 2,
                querycfg.HostPort(f"replica{i}.example", 34801) if with_hp else None,
                (querycfg.HostPort("r2", 34802), querycfg.HostPort("r3", 65535)) if with_hp else None,
                () if with_hp else None,
            )
            for i in range(n)
        ),
    )


def to_ref(resp, with_hp=True):
    """@return: C{resp} as the generated reference C{query_cfg_response}."""
    parts = []
    for p in resp.partitions:
        kw = dict(
            pid=base.gpid(p.app_id, p.partition_index), ballot=p.ballot, max_replica_count=p.max_replica_count,
            primary=base.rpc_address(p.primary), secondaries=[base.rpc_address(a) for a in p.secondaries],
            last_drops=[base.rpc_address(a) for a in p.last_drops], last_committed_decree=p.last_committed_decree,
            partition_flags=p.partition_flags,
        )
        if with_hp and p.hp_primary is not None:
            kw["hp_primary"] = base.host_port(p.hp_primary.host, p.hp_primary.port, p.hp_primary.type)
        if with_hp and p.hp_secondaries is not None:
            kw["hp_secondaries"] = [base.host_port(h.host, h.port, h.type) for h in p.hp_secondaries]
        if with_hp and p.hp_last_drops is not None:
            kw["hp_last_drops"] = [base.host_port(h.host, h.port, h.type) for h in p.hp_last_drops]
        parts.append(ref.partition_configuration(**kw))
    return ref.query_cfg_response(
        err=base.error_code(resp.err), app_id=resp.app_id, partition_count=resp.partition_count,
        is_stateful=resp.is_stateful, partitions=parts,
    )


def ref_write(obj):
    """@return: the bytes the generated code writes for C{obj} (strict binary protocol)."""
    buf = TMemoryBuffer()
    obj.write(TBinaryProtocol(buf))
    return buf.getvalue()


def ref_read(cls, data):
    """
    @return: C{(obj, consumed)}: a C{cls} read by the generated code (strict
        read) and how many bytes of C{data} it consumed.
    """
    buf = TMemoryBuffer(data)
    obj = cls()
    obj.read(TBinaryProtocol(buf, strictRead=True))
    return obj, buf._buffer.tell()
