"""
Test helpers that ship with metaproxy: a real-ZooKeeper fixture, a simulated
Pegasus meta cluster, and in-memory fakes of the interfaces in
L{metaproxy.interfaces}. One module per helper.
"""
