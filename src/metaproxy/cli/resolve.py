# -*- test-case-name: metaproxy.test.test_cli -*-
"""
C{metaproxy resolve TABLE --via HOST:PORT}: what a client gets for a table,
like the Pegasus shell's C{app TABLE -d}.
"""

import json

from metaproxy.cli.common import USAGE, CommandError, add_global_arguments, run_on_reactor
from metaproxy.cli.metaquery import Refused, as_json, partition_rows, query_table
from metaproxy.errors import BackendUnavailable
from metaproxy.routes.route import MetaAddrs
from metaproxy.wire.binary import DecodeError


def add_parser(subparsers):
    """Add the C{resolve} command to an argparse subparsers object."""
    p = subparsers.add_parser(
        "resolve",
        help="ask a metaproxy or a meta for a table's partitions, as a client would",
        description="Ask a metaproxy or a meta server for TABLE's partition configuration (following the "
        "leader, as metaproxy does) and print it like the Pegasus shell's `app TABLE -d`.",
    )
    p.add_argument("table")
    p.add_argument("--via", required=True, metavar="HOST:PORT", help="a metaproxy or meta server address")
    p.add_argument("--v1", action="store_true", help="send the v1 request header (as Java 2.x clients do)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="seconds the address --via names has to answer, connecting included (default 5); "
                   "a refused connection fails at once")
    add_global_arguments(p)
    p.set_defaults(command=run, accepts={"json"})


def format_table(table, via, response):
    """@return: the text C{resolve} prints: a summary, then one row per partition."""
    rows = partition_rows(response)
    with_primary = sum(1 for r in rows if r["primary"] is not None)
    lines = [
        f"table            : {table}",
        f"via              : {via}",
        f"app_id           : {response.app_id}",
        f"partition_count  : {response.partition_count}",
        f"is_stateful      : {str(response.is_stateful).lower()}",
        f"status           : {response.err}, {with_primary}/{len(rows)} partitions with a primary",
        "",
        f"{'pidx':>6}  {'ballot':>8}  {'primary':<22}  secondaries",
    ]
    for r in rows:
        lines.append(f"{r['pidx']:>6}  {r['ballot']:>8}  {r['primary'] or '-':<22}  {','.join(r['secondaries']) or '-'}")
    return "\n".join(lines)


def run(args, out):
    """Run C{resolve}; @return: the exit status."""
    if args.timeout <= 0 or args.timeout > 3600:
        raise CommandError("--timeout must be > 0 and <= 3600 seconds", USAGE)
    try:
        via = MetaAddrs.parse([args.via])
    except ValueError as e:
        raise CommandError(f"--via: {e}", USAGE) from None
    try:
        response = run_on_reactor(
            lambda reactor: query_table(reactor, via, args.table, args.timeout, 1 if args.v1 else 0)
        )
    except Refused as e:
        raise CommandError(f"{e}; nothing answered for {args.table!r}") from None
    except BackendUnavailable as e:
        raise CommandError(f"{args.via} did not answer for {args.table!r}: {e}") from None
    except DecodeError as e:
        raise CommandError(f"{args.via} sent an answer that cannot be decoded: {e}") from None
    if args.json:
        out.write(json.dumps(as_json(response), indent=2) + "\n")
    elif response.err == "ERR_OK":
        out.write(format_table(args.table, args.via, response) + "\n")
    if response.err != "ERR_OK":
        raise CommandError(f"{response.err}: {args.via} answered {response.err} for table {args.table!r}")
    return 0
