"""
What clients talk to: the server protocol and its bounded buffers, the RPC
dispatcher, and the query_cfg resolver (route, ask, relay).
"""
