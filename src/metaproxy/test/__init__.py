"""Tests for metaproxy, run with ``trial metaproxy``."""
