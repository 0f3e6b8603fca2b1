"""Scripts run under real Pegasus client libraries, in their own virtualenvs."""
