# -*- test-case-name: metaproxy.test.test_sim -*-
"""
The C{twistd pegasus-sim} plugin: a simulated Pegasus meta cluster.

Kept import-light: the real module is loaded only when the plugin is used.
"""

from twisted.application.service import ServiceMaker

pegasus_sim = ServiceMaker(
    "Pegasus meta simulator",
    "metaproxy.sim.tap",
    "A simulated Apache Pegasus meta cluster (N metas, one leader) for tests and benchmarks.",
    "pegasus-sim",
)
