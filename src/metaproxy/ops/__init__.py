"""
Running metaproxy: metrics, the admin HTTP surface, logs, signals, systemd
(notify, socket activation), the ordered lifecycle and hot upgrades.
"""
