"""
metaproxy: a Twisted meta-proxy for Apache Pegasus.

Pegasus clients ask it for a table's partition configuration; it finds the
cluster that owns the table (ZooKeeper, or a static map) and answers exactly
as that cluster's leader meta server would.
"""

__version__ = "0.1.0"
