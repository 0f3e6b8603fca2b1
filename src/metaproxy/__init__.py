"""
metaproxy: a Twisted meta-proxy for Apache Pegasus.

Pegasus clients ask it for a table's partition configuration; it finds the
cluster that owns the table (ZooKeeper, or a static map) and answers exactly
as that cluster's leader meta server would.
"""



def _find_version():
    """
    @return: the version the build recorded (from git by setuptools-scm: a
        commit that is not a release reads C{X.Y.Z.devN+g<hash>}), else the
        installed distribution's, else C{0.0.0+unknown} (a bare source tree).
    """
    try:
        from metaproxy._version import version

        return version
    except ImportError:
        pass
    try:
        from importlib.metadata import PackageNotFoundError, version as dist_version
    except ImportError:  # pragma: no cover
        return "0.0.0+unknown"
    try:
        return dist_version("metaproxy")
    except PackageNotFoundError:
        return "0.0.0+unknown"


__version__ = _find_version()
