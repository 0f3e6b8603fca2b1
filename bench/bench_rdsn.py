"""
RDSN codec micro-benchmark: microseconds per operation for the C++ client's
framing (192-byte native header), next to the THFT v0 figures, and the cost
of the pure-Python CRC-32C that a request carrying CRCs adds.

    .venv/bin/python bench/bench_rdsn.py

Best of 7 repeats (L{bench_codec.best_us}); prints one line per operation.
Run it on an idle machine; the figures are for comparing framings and
versions, not a test.
"""

from bench_codec import best_us

from metaproxy.testing.rdsn_client import query_cfg_body
from metaproxy.wire import frame, querycfg, rdsn
from metaproxy.wire.crc32c import crc32c


def main():
    body = query_cfg_body("temp")
    request = rdsn.encode_request(querycfg.QUERY_CFG, 1, body, client_timeout=5000)
    request_crc = rdsn.with_crc(request)
    thft = frame.encode_request(querycfg.QUERY_CFG, 1, querycfg.encode_args("temp"))
    decoder = rdsn.RdsnRequestDecoder()
    thft_decoder = frame.RequestDecoder()
    [decoded] = decoder.feed(request)
    reply = frame.Reply(querycfg.error_result("ERR_OK"))
    framer = rdsn.RdsnFramer(querycfg.rpc_address("127.0.0.1", 34601))
    kib = bytes(range(256)) * 4
    rows = [
        (f"RDSN request decode ({len(request)} B)", lambda: decoder.feed(request), 20000),
        (f"RDSN request decode, CRCs on ({len(request_crc)} B)", lambda: decoder.feed(request_crc), 2000),
        (f"THFT v0 request decode ({len(thft)} B)", lambda: thft_decoder.feed(thft), 20000),
        ("query_cfg args decode (RDSN body, id 0)", lambda: querycfg.decode_args(body), 50000),
        ("query_cfg args decode (THFT args, id 1)", lambda: querycfg.decode_args(querycfg.encode_args("temp")), 50000),
        ("RDSN reply encode", lambda: framer.encode(decoded, reply, "ERR_OK"), 20000),
        ("CRC-32C of 1 KiB", lambda: crc32c(kib), 500),
    ]
    for name, fn, n in rows:
        print(f"  {name:<44} {best_us(fn, n):>10.1f} us")


if __name__ == "__main__":
    main()
