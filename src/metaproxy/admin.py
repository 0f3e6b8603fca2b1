# -*- test-case-name: metaproxy.test.test_admin -*-
"""
The admin HTTP surface (loopback by default): health, readiness, routes.

Metric reporters may mount more resources on the same root (the Prometheus
reporter adds C{/metrics}).
"""

import json

from twisted.web.resource import Resource
from twisted.web.server import Site

_JSON = b"application/json"


def _json(request, code, obj):
    request.setResponseCode(code)
    request.setHeader(b"content-type", _JSON)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode() + b"\n"


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, render):
        super().__init__()
        self._render = render

    def render_GET(self, request):
        return self._render(request)


class _Root(Resource):
    """Lists what the admin listener serves."""

    def render_GET(self, request):
        names = sorted(k.decode() for k in self.children)
        return _json(request, 200, {"endpoints": ["/" + n for n in names]})

    def getChild(self, path, request):
        if path == b"":
            return self
        return super().getChild(path, request)


class QuietSite(Site):
    """A L{Site} without a per-request access log line (scrapes are frequent)."""

    noisy = False

    def log(self, request):
        """Log nothing per request."""


def build_admin_root(route_table, ready, leaders=None):
    """
    Build the admin resource tree.

    @param route_table: an L{metaproxy.interfaces.IRouteTable}.
    @param ready: C{callable() -> bool}: is the proxy ready to take traffic
        (listener bound and route source usable)?
    @param leaders: optional C{callable(meta_addrs_string) -> "ip:port" |
        None} giving the leader metaproxy currently believes in.
    @return: a L{Resource} serving C{/healthz} (200 while the process
        serves HTTP at all), C{/readyz} (200 when ready, else 503) and
        C{/routes} (JSON list of the cached routes).
    """
    root = _Root()

    def healthz(request):
        request.setHeader(b"content-type", b"text/plain")
        return b"ok\n"

    def readyz(request):
        ok = bool(ready())
        route_ok = bool(route_table.is_ready())
        return _json(
            request,
            200 if ok else 503,
            {"ready": ok, "route_source_ready": route_ok},
        )

    def routes(request):
        entries = []
        for entry in route_table.describe():
            entry = dict(entry)
            if leaders is not None and entry.get("meta_addrs"):
                addrs = entry["meta_addrs"]
                key = ",".join(addrs) if isinstance(addrs, (list, tuple)) else str(addrs)
                entry["leader"] = leaders(key)
            entries.append(entry)
        return _json(request, 200, {"routes": entries, "count": len(entries)})

    root.putChild(b"healthz", _Leaf(healthz))
    root.putChild(b"readyz", _Leaf(readyz))
    root.putChild(b"routes", _Leaf(routes))
    return root
