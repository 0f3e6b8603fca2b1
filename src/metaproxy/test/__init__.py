"""Tests for metaproxy, run with ``trial metaproxy``."""

# kazoo logs through stdlib logging. Without a handler, Python's last-resort
# handler prints its warnings (every reconnect while a test stops ZooKeeper)
# on stderr, in the middle of trial's report. Send them where metaproxy sends
# them in production, into twisted.logger: trial writes that to test.log.
from metaproxy.logs import bridge_stdlib_logging as _bridge

_bridge()
