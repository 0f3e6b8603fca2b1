"""
Codec micro-benchmark: microseconds per operation for a query_cfg response
of 256 partitions x 3 replicas with hp_* fields (as Pegasus master sends),
hand codec vs thrift-generated reference code (pure-python TBinaryProtocol).

    .venv/bin/python bench/bench_codec.py

Best of 7 repeats; prints one line per operation.
"""

import timeit

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.transport.TTransport import TMemoryBuffer

from metaproxy.test.reference.gen.pegasus_ref import meta as ref_meta
from metaproxy.test.test_wire import _big_response, _to_ref
from metaproxy.wire import frame, querycfg


def best_us(fn, number):
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main():
    resp = _big_response(256, with_hp=True)
    body = querycfg.encode_result(resp)
    stripped = querycfg.strip_host_port(body)
    ref_obj = ref_meta.query_cfg_result(success=_to_ref(resp, True))
    request = frame.encode_request(querycfg.QUERY_CFG, 1, querycfg.encode_args("temp"))
    args = querycfg.encode_args("temp")

    def ref_encode():
        buf = TMemoryBuffer()
        ref_obj.write(TBinaryProtocol(buf))
        return buf.getvalue()

    def ref_decode():
        obj = ref_meta.query_cfg_result()
        obj.read(TBinaryProtocol(TMemoryBuffer(body)))
        return obj

    rows = [
        ("hand encode (full response)", lambda: querycfg.encode_result(resp), 20),
        ("hand decode (full response)", lambda: querycfg.decode_result(body), 20),
        ("peek (err, app_id, count)", lambda: querycfg.peek_result(body), 20000),
        ("strip hp_* (present)", lambda: querycfg.strip_host_port(body), 50),
        ("strip hp_* (absent: scan only)", lambda: querycfg.strip_host_port(stripped), 2000),
        ("thrift reference encode", ref_encode, 5),
        ("thrift reference decode", ref_decode, 5),
        ("request frame decode (v0, 122 B)", lambda: frame.RequestDecoder().feed(request), 20000),
        ("query_cfg args decode", lambda: querycfg.decode_args(args), 50000),
        ("reply frame encode (relay body)", lambda: frame.encode_reply(querycfg.QUERY_CFG_ACK, 1, stripped), 20000),
    ]
    print(f"query_cfg response: 256 partitions x 3 replicas, {len(body)} bytes with hp_*, {len(stripped)} without")
    for name, fn, n in rows:
        print(f"  {name:<36} {best_us(fn, n):>10.1f} us")


if __name__ == "__main__":
    main()
