# -*- test-case-name: metaproxy.test.test_admin -*-
"""
The admin HTTP surface (loopback by default): health, readiness, routes.

  - C{/healthz}: 200 C{ok} while the reactor runs (it answers at all) and
    every extra health check passes; else 503 naming the failing ones.
  - C{/readyz}: 200 when every readiness condition holds, else 503; the
    JSON body gives each condition and lists the unmet ones.
  - C{/routes}: JSON: every cached table with its cluster, meta
    addresses, the leader (only once a meta answered), age, staleness and
    last error, and the cluster's own state (C{backend}: whether any meta
    answered, when it last did, the last error, up or not).
  - C{/}: JSON list of what is served.

Metric reporters may mount more resources on the same root (the
Prometheus reporter adds C{/metrics}). Checks that raise count as failed
and are logged; no endpoint ever answers with a traceback.
"""

import json

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

log = Logger()

_JSON = b"application/json"


def _json(request, code, obj):
    request.setResponseCode(code)
    request.setHeader(b"content-type", _JSON)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode() + b"\n"


def _run_checks(checks, what):
    """@return: C{{name: bool}} for C{checks} (C{{name: callable}}); a raising check is False."""
    results = {}
    for name, check in checks.items():
        try:
            results[name] = bool(check())
        except Exception:
            log.failure("{what} check {name} failed", what=what, name=name)
            results[name] = False
    return results


class _Leaf(Resource):
    """Renders GET (and HEAD) with one function."""

    isLeaf = True

    def __init__(self, render):
        super().__init__()
        self._render = render

    def render_GET(self, request):
        """@return: what the function renders."""
        return self._render(request)


class _Root(Resource):
    """Lists what the admin listener serves."""

    def render_GET(self, request):
        """@return: JSON C{{"endpoints": [...]}}, including resources mounted later."""
        names = sorted(k.decode() for k in self.children)
        return _json(request, 200, {"endpoints": ["/" + n for n in names]})

    def getChild(self, path, request):
        """Serve the root for a trailing slash."""
        if path == b"":
            return self
        return super().getChild(path, request)


class QuietSite(Site):
    """A L{Site} without a per-request access log line (scrapes are frequent)."""

    noisy = False

    def log(self, request):
        """Log nothing per request."""


def build_admin_root(route_table, ready, leaders=None, health=None, clusters=None):
    """
    Build the admin resource tree.

    @param route_table: an L{metaproxy.interfaces.IRouteTable}; its
        C{is_ready()} is always the readiness condition C{route_source},
        its C{describe()} feeds C{/routes}, and its C{zk_state} (if it has
        one) is shown there too.
    @param ready: the other readiness conditions: a C{callable() -> bool}
        (reported as condition C{proxy}), or a mapping of condition name
        -> C{callable() -> bool} (e.g. C{{"listener": ...}}).
    @param leaders: optional C{callable(meta_addrs) -> "host:port" | None}
        giving the leader metaproxy currently believes in for a cluster;
        C{meta_addrs} is the route's addresses joined with commas.
    @param clusters: optional C{callable(meta_addrs) -> dict | None}: the
        cluster's state (L{metaproxy.backend.cluster.MetaCluster.describe});
        when given it replaces C{leaders}: each entry gets C{leader} (only
        if a meta ever answered) and C{backend}.
    @param health: optional mapping of name -> C{callable() -> bool}:
        extra liveness checks for C{/healthz} (keep them cheap and about
        this process only; none by default).
    @return: the root L{Resource}, serving C{/}, C{/healthz}, C{/readyz}
        and C{/routes}.
    """
    root = _Root()
    conditions = {"route_source": route_table.is_ready}
    conditions.update(ready if isinstance(ready, dict) else {"proxy": ready})
    health = dict(health or {})

    def healthz(request):
        failing = sorted(name for name, ok in _run_checks(health, "health").items() if not ok)
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"cache-control", b"no-store")
        if failing:
            request.setResponseCode(503)
            return ("failing: " + ", ".join(failing) + "\n").encode()
        return b"ok\n"

    def readyz(request):
        results = _run_checks(conditions, "readiness")
        unmet = sorted(name for name, ok in results.items() if not ok)
        return _json(request, 503 if unmet else 200, {"ready": not unmet, "checks": results, "unmet": unmet})

    def routes(request):
        entries = []
        known = {}
        for entry in route_table.describe():
            entry = dict(entry)
            if clusters is not None:
                addrs = entry.get("meta_addrs") or []
                key = ",".join(addrs) if isinstance(addrs, (list, tuple)) else str(addrs)
                if key not in known:
                    known[key] = _backend(clusters, key) if key else None
                entry["leader"], entry["backend"] = known[key] or (None, None)
            elif leaders is not None:
                addrs = entry.get("meta_addrs") or []
                key = ",".join(addrs) if isinstance(addrs, (list, tuple)) else str(addrs)
                if key not in known:
                    known[key] = _leader(leaders, key) if key else None
                entry["leader"] = known[key]
            entries.append(entry)
        entries.sort(key=lambda e: str(e.get("table")))
        doc = {"routes": entries, "count": len(entries), "ready": bool(_run_checks(
            {"route_source": route_table.is_ready}, "readiness")["route_source"])}
        zk_state = getattr(route_table, "zk_state", None)
        if zk_state is not None:
            doc["zk_state"] = str(zk_state)
        return _json(request, 200, doc)

    root.putChild(b"healthz", _Leaf(healthz))
    root.putChild(b"readyz", _Leaf(readyz))
    root.putChild(b"routes", _Leaf(routes))
    return root


_BACKEND_KEYS = ("answered", "last_answer_age", "last_error", "last_error_age", "up")


def _backend(clusters, meta_addrs):
    """@return: C{(leader or None, backend state dict)} or L{None} when no pool exists."""
    try:
        state = clusters(meta_addrs)
    except Exception:
        log.failure("describing the cluster {meta_addrs} failed", meta_addrs=meta_addrs)
        return None
    if not state:
        return None
    backend = {k: state.get(k) for k in _BACKEND_KEYS}
    return (state.get("leader") if state.get("answered") else None), backend


def _leader(leaders, meta_addrs):
    try:
        return leaders(meta_addrs)
    except Exception:
        log.failure("finding the leader of {meta_addrs} failed", meta_addrs=meta_addrs)
        return None
