"""
Decoder CPU against how the bytes are split: 1 MiB fed to the request and
reply decoders in 1, 1 000 and 10 000 pieces.

    .venv/bin/python bench/bench_decoders.py [--repeat 5]

Each row is the CPU time (C{time.process_time}, best of --repeat runs) to
decode 1 MiB of frames: one 1 MiB frame, or 1 MiB of small pipelined
frames (122-byte query_cfg requests; 840-byte replies). Linear decoding
keeps each row's figures within a small factor of its 1-piece figure
(per-piece Python overhead only); quadratic decoding would grow with the
number of pieces times the frame size.
"""

import argparse
import time

from metaproxy.wire import frame, querycfg

MIB = 1 << 20


def big_request():
    """@return: one request frame of about 1 MiB."""
    args = querycfg.encode_args("t" * (MIB - 200))
    return frame.encode_request(querycfg.QUERY_CFG, 1, args)


def small_requests():
    """@return: about 1 MiB of 122-byte query_cfg request frames."""
    one = frame.encode_request(querycfg.QUERY_CFG, 1, querycfg.encode_args("temp"))
    return one * (MIB // len(one))


def big_reply():
    """@return: one reply frame of about 1 MiB."""
    return frame.encode_reply(querycfg.QUERY_CFG_ACK, 1, b"\x00" * (MIB - 100))


def small_replies():
    """@return: about 1 MiB of 840-byte reply frames."""
    one = frame.encode_reply(querycfg.QUERY_CFG_ACK, 1, b"\x00" * 780)
    return one * (MIB // len(one))


def split(data, pieces):
    """@return: C{data} cut into C{pieces} nearly equal chunks."""
    size = -(-len(data) // pieces)
    return [data[i : i + size] for i in range(0, len(data), size)]


def cpu(make_decoder, chunks, repeat):
    """@return: (best CPU seconds, frames decoded) to feed C{chunks} to a new decoder."""
    best, frames = None, 0
    for _ in range(repeat):
        decoder = make_decoder()
        start = time.process_time()
        count = 0
        for chunk in chunks:
            count += len(decoder.feed(chunk))
        spent = time.process_time() - start
        best = spent if best is None else min(best, spent)
        frames = count
    return best, frames


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cases = [
        ("request decoder, one 1 MiB frame", lambda: frame.RequestDecoder(2 * MIB), big_request()),
        ("request decoder, 1 MiB of 122 B frames", lambda: frame.RequestDecoder(2 * MIB), small_requests()),
        ("reply decoder, one 1 MiB frame", lambda: frame.ResponseDecoder(2 * MIB), big_reply()),
        ("reply decoder, 1 MiB of 840 B frames", lambda: frame.ResponseDecoder(2 * MIB), small_replies()),
    ]
    pieces = (1, 1000, 10000)
    print("CPU ms to decode 1 MiB fed in 1, 1 000 and 10 000 pieces")
    print(f"{'case':42} " + " ".join(f"{p:>11} pcs" for p in pieces) + "   us/piece at 10 000")
    for name, make, data in cases:
        row = []
        for p in pieces:
            spent, frames = cpu(make, split(data, p), args.repeat)
            row.append(spent)
        per_piece = (row[-1] - row[0]) / pieces[-1] * 1e6
        print(f"{name:42} " + " ".join(f"{t * 1000:15.2f}" for t in row) + f"   {per_piece:8.2f}  ({frames} frames)")
    print()
    print("CPU ms for one reply of 1, 4 and 16 MiB fed in 10 000 pieces (linear: grows with the size)")
    for size in (1, 4, 16):
        data = frame.encode_reply(querycfg.QUERY_CFG_ACK, 1, b"\x00" * (size * MIB - 100))
        spent, _ = cpu(lambda: frame.ResponseDecoder(32 * MIB), split(data, 10000), args.repeat)
        print(f"{f'reply decoder, one {size} MiB frame':42} {spent * 1000:15.2f}")


if __name__ == "__main__":
    main()
