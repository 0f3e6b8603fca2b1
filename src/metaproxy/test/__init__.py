"""Tests for metaproxy, run with ``trial metaproxy``."""

# kazoo logs through stdlib logging. Without a handler, Python's last-resort
# handler prints its warnings (every reconnect while a test stops ZooKeeper)
# on stderr, in the middle of trial's report. Send them where metaproxy sends
# them in production, into twisted.logger: trial writes that to test.log.
from metaproxy.ops.logs import bridge_stdlib_logging as _bridge

_bridge()

# Hypothesis's per-example deadline is a timing assertion; on a loaded CI
# machine (or PyPy before its JIT warms up) it fails correct code. Property
# tests here check behaviour only; speed is the benchmarks' job.
try:
    from hypothesis import settings as _settings
except ImportError:  # hypothesis is a test extra; modules that need it import it themselves
    pass
else:
    _settings.register_profile("metaproxy", deadline=None)
    _settings.load_profile("metaproxy")
