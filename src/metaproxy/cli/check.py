# -*- test-case-name: metaproxy.test.test_cli -*-
"""
C{metaproxy check --config FILE} (and C{twistd metaproxy --check}): load a
config as the service would and say what would run, or every problem.
"""

from metaproxy.cli.common import add_global_arguments, load


def add_parser(subparsers):
    """Add the C{check} command to an argparse subparsers object."""
    p = subparsers.add_parser(
        "check",
        help="check a configuration file without serving",
        description="Load FILE as `twistd metaproxy` would. Print every problem as file:line:col (exit 2), "
        "or one line saying what would run (exit 0).",
    )
    add_global_arguments(p)
    p.set_defaults(command=run, accepts={"config"})


def summary(config):
    """
    @param config: a loaded L{metaproxy.config.Config}.
    @return: one line: route source, listeners and metric reporter.
    """
    zk = config.zookeeper
    if zk is not None:
        source = f"routes from ZooKeeper {','.join(zk.address)} under {zk.root}"
    else:
        source = f"{len(config.routes)} static routes"
    if config.simulator is not None and config.simulator.clusters:
        names = ", ".join(c.name for c in config.simulator.clusters)
        source += f", simulated clusters: {names}"
    return (
        f"{source}; clients on {config.listen}; admin on {config.admin.listen}; "
        f"metrics: {config.metric.type}; log level {config.logging.level}"
    )


def check_file(path):
    """
    @return: the one-line summary of the config at C{path}, prefixed C{"ok: "}.
    @raise metaproxy.cli.common.CommandError: every problem, located.
    """
    return f"{path}: ok: {summary(load(path))}"


def run(args, out):
    """Run C{check}; @return: the exit status."""
    out.write(check_file(args.config) + "\n")
    return 0
