"""
Where a table's cluster comes from: the route value, the static C{routes:} map,
and the ZooKeeper registry (kazoo bridged into the reactor, the root listing).
"""
