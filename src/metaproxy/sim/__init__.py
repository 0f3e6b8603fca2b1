# -*- test-case-name: metaproxy.test.test_sim -*-
"""
A simulated Pegasus meta cluster, for tests, demos and benchmarks.

 - L{metaproxy.sim.model}: tables and the answers they give;
 - L{metaproxy.sim.server}: meta servers on real ports, one leader, with
   fault switches (leader change, a meta down, slow answers,
   C{ERR_SERVICE_NOT_ACTIVE}, silence);
 - L{metaproxy.sim.tap}: the C{twistd pegasus-sim} plugin.
"""
