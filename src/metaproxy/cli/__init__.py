# -*- test-case-name: metaproxy.test.test_cli -*-
"""
The C{metaproxy} command: operate a metaproxy deployment.

    metaproxy --version
    metaproxy check [--config FILE]
    metaproxy resolve TABLE --via HOST:PORT [--v1] [--timeout S] [--json]
    metaproxy routes list|get|switch|set|delete ... [--config FILE]
    metaproxy fleet [list|routes TABLE] [--config FILE] [--json]

The config is C{--config}, else C{$METAPROXY_CONFIG}, else
C{/etc/metaproxy/metaproxy.yaml}. The global flags (C{--config},
C{--json}, C{--yes}, C{--dry-run}) may come before or after the command.

Every command reuses the service's own code (config loader, codec, meta
client, ZooKeeper layout), prints a clear message instead of a traceback,
and exits 0 on success, 1 when the operation failed or was refused, 2 for
bad usage or a bad configuration.
"""

import argparse
import sys

from metaproxy import __version__
from metaproxy.cli.common import FAILED, USAGE, CommandError, add_global_arguments, config_path, finish_global_arguments


def build_parser():
    """@return: the L{argparse.ArgumentParser} of the C{metaproxy} command."""
    from metaproxy.cli import check, fleet, resolve, routes

    parser = argparse.ArgumentParser(prog="metaproxy", description="Operate metaproxy, the Pegasus meta proxy.")
    parser.add_argument("--version", action="version", version=f"metaproxy {__version__}")
    add_global_arguments(parser)
    sub = parser.add_subparsers(dest="command_name", metavar="{check,resolve,routes,fleet}")
    sub.required = True
    check.add_parser(sub)
    resolve.add_parser(sub)
    routes.add_parsers(sub)
    fleet.add_parser(sub)
    return parser


def main(argv=None, out=None, err=None):
    """
    Run one command.

    @param argv: the arguments (default: C{sys.argv[1:]}).
    @return: the exit status.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else USAGE
    try:
        accepts = getattr(args, "accepts", ())
        finish_global_arguments(args, accepts)
        if "config" in accepts:
            args.config = config_path(args)
        return args.command(args, out)
    except CommandError as e:
        err.write(f"metaproxy {args.command_name}: {e}\n")
        return e.status
    except KeyboardInterrupt:
        err.write(f"metaproxy {args.command_name}: interrupted\n")
        return FAILED
    except Exception as e:  # a bug must still give one line, not a traceback
        err.write(f"metaproxy {args.command_name}: unexpected error: {type(e).__name__}: {e}\n")
        return FAILED
