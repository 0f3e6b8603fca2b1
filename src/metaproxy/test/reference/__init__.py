"""Reference code for the codec tests."""
