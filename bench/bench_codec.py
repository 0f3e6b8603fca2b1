"""
Codec micro-benchmark: microseconds per operation for a query_cfg response
of 256 partitions x 3 replicas with hp_* fields (as Pegasus master sends),
hand codec vs thrift-generated reference code (pure-python TBinaryProtocol).

    .venv/bin/python bench/bench_codec.py

Best of 7 repeats; prints one line per operation. Run it on an idle
machine; the figures are for comparing codecs and versions, not a test.
"""

import timeit

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.transport.TTransport import TMemoryBuffer

from metaproxy.test.reference.gen.pegasus_ref import meta as ref_meta
from metaproxy.test.reference.samples import big_response, to_ref
from metaproxy.wire import frame, querycfg


def best_us(fn, number):
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main():
    resp = big_response(256, with_hp=True)
    body = querycfg.encode_result(resp)
    stripped = querycfg.strip_host_port(body)
    ref_obj = ref_meta.query_cfg_result(success=to_ref(resp, True))
    request = frame.encode_request(querycfg.QUERY_CFG, 1, querycfg.encode_args("temp"))
    request_v1 = frame.encode_request(
        querycfg.QUERY_CFG, 1, querycfg.encode_args("temp"), version=1, app_id=-1, partition_index=-1,
        client_timeout=5000,
    )
    decoder = frame.RequestDecoder()
    args = querycfg.encode_args("temp")
    reply = frame.Reply(stripped)
    [decoded] = decoder.feed(request)

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
        ("request frame decode (v0, 122 B)", lambda: decoder.feed(request), 20000),
        ("request frame decode (v1, 127 B)", lambda: decoder.feed(request_v1), 20000),
        ("query_cfg args decode", lambda: querycfg.decode_args(args), 50000),
        ("reply frame encode (relay body)", lambda: frame.encode_reply_for(decoded, reply), 20000),
    ]
    print(f"query_cfg response: 256 partitions x 3 replicas, {len(body)} bytes with hp_*, {len(stripped)} without")
    for name, fn, n in rows:
        print(f"  {name:<36} {best_us(fn, n):>10.1f} us")


if __name__ == "__main__":
    main()
