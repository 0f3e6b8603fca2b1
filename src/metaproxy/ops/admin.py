# -*- test-case-name: metaproxy.test.test_admin -*-
"""
The admin HTTP surface (loopback by default): health, readiness, routes.

  - C{/healthz}: 200 C{ok} while the reactor runs (it answers at all) and
    every extra health check passes; else 503 naming the failing ones.
  - C{/readyz}: 200 when every readiness condition holds, else 503; the
    JSON body gives each condition, lists the unmet ones, and names a
    cause for each unmet one (C{causes}; e.g. a missing zookeeper.root for
    C{route_source}).
  - C{/routes}: JSON: every cached table with its cluster, meta
    addresses, the leader (only once a meta answered), age, staleness and
    last error, and the cluster's own state (C{backend}: whether any meta
    answered, when it last did, the last error, up or not, and for a
    Kerberos-secured cluster its negotiation state as C{auth}) and
    C{last_good_age}: the age of the table's last good query_cfg answer,
    which stale-if-error may serve while the cluster cannot answer; with
    ZooKeeper routes also the C{czxid} and C{mzxid} of the node version
    held (the CLI's fleet-wide wait compares them with the version it
    wrote).
    C{/routes?table=NAME} (repeatable) shows only those tables, or answers
    404 naming the ones not in the route cache.
  - C{/}: JSON list of what is served.

Metric reporters may mount more resources on the same root (the
Prometheus reporter adds C{/metrics}). Checks that raise count as failed
and are logged; no endpoint ever answers with a traceback.

The listener is bounded (L{build_admin_site}): at most C{max_connections}
at once (more are closed at once, with a rate-limited warning) and a
connection idle for C{idle_timeout} seconds is closed.
"""

import json

from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
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


class LimitedSite(WrappingFactory):
    """
    Wraps an HTTP site so that at most C{max_connections} connections are
    open at once; one more is closed as soon as it is accepted.

    @ivar refused: connections closed for the limit.
    """

    noisy = False

    def __init__(self, site, max_connections, clock):
        """
        @param site: the wrapped L{Site}.
        @param max_connections: the limit (0: none).
        @param clock: an L{IReactorTime} for rate-limiting the warnings.
        """
        super().__init__(site)
        self.max_connections = max_connections
        self.refused = 0
        self._clock = clock
        self._last_warning = None
        self._unlogged = 0

    def buildProtocol(self, addr):
        """@return: the site's protocol, or L{None} (close it) when at the limit."""
        if self.max_connections and len(self.protocols) >= self.max_connections:
            self.refused += 1
            now = self._clock.seconds()
            if self._last_warning is None or now - self._last_warning >= 10.0:
                self._last_warning = now
                log.warn(
                    "refusing an admin connection from {peer}: {count} open, admin.max_connections "
                    "({unlogged} more refused since the last warning)",
                    peer=getattr(addr, "host", "?"),
                    count=len(self.protocols),
                    unlogged=self._unlogged,
                )
                self._unlogged = 0
            else:
                self._unlogged += 1
            return None
        return super().buildProtocol(addr)


def build_admin_site(root, reactor, max_connections=64, idle_timeout=30.0, tls=None):
    """
    @param root: the resource tree (see L{build_admin_root}).
    @param reactor: provides L{IReactorTime}: idle timeouts run on it.
    @param max_connections: admin connections at once (0: no limit).
    @param idle_timeout: seconds a connection may stay idle.
    @param tls: a TLS context factory (L{metaproxy.ops.admintls.split_tls}),
        or L{None} for plain HTTP.
    @return: the factory to listen with: a L{LimitedSite} around a
        L{QuietSite} (around TLS first, when C{tls} is given).
    """
    site = QuietSite(root, timeout=idle_timeout, reactor=reactor)
    if tls is not None:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        site = TLSMemoryBIOFactory(tls, False, site)
    return LimitedSite(site, max_connections, reactor)


def build_admin_root(route_table, ready, leaders=None, health=None, clusters=None, causes=None,
                     last_good_ages=None):
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
    @param causes: optional mapping of condition name -> C{callable() ->
        str}: why that condition is unmet, shown in C{/readyz} (the route
        source's comes from its C{unready_reason()}).
    @param last_good_ages: optional C{callable() -> {table: seconds}}: the
        age of each table's last good query_cfg answer (stale-if-error),
        shown in C{/routes} as C{last_good_age} (L{None}: none kept).
    @return: the root L{Resource}, serving C{/}, C{/healthz}, C{/readyz}
        and C{/routes}.
    """
    root = _Root()
    conditions = {"route_source": lambda: route_table.is_ready()}
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
        doc = {"ready": not unmet, "checks": results, "unmet": unmet}
        if unmet:
            doc["causes"] = {name: _cause_of(name, route_table, causes) for name in unmet}
        return _json(request, 503 if unmet else 200, doc)

    def routes(request):
        wanted = _wanted_tables(request)
        entries = []
        known = {}
        ages = _last_good_ages(last_good_ages)
        for entry in route_table.describe():
            if wanted is not None and entry.get("table") not in wanted:
                continue
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
            if ages is not None:
                entry["last_good_age"] = ages.get(entry.get("table"))
            entries.append(entry)
        entries.sort(key=lambda e: str(e.get("table")))
        if wanted is not None:
            missing = sorted(wanted - {e.get("table") for e in entries})
            if missing:
                return _json(request, 404, _not_cached(missing))
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


#: At most this many characters of a table name asked for are echoed.
_MAX_NAME = 200


def _wanted_tables(request):
    """@return: the set of C{table=} query values, or L{None} without any."""
    values = (getattr(request, "args", None) or {}).get(b"table")
    if values is None:
        return None
    return {v.decode("utf-8", "replace") for v in values}


def _not_cached(missing):
    """@return: the 404 body for tables asked for that are not in the route cache."""
    shown = [name if len(name) <= _MAX_NAME else name[:_MAX_NAME] + "..." for name in missing[:10]]
    names = ", ".join(repr(name) for name in shown) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    return {
        "error": f"not in the route cache: {names} (a table is cached when a client first asks for it; "
                 "/routes lists the cached ones)",
        "missing": shown,
    }


def _cause_of(name, route_table, causes):
    """@return: why readiness condition C{name} is unmet: always a L{str}."""
    if name == "route_source":
        cause = _route_source_cause(route_table)
    else:
        cause = None
        explain = (causes or {}).get(name)
        if explain is not None:
            try:
                cause = explain()
            except Exception:
                log.failure("asking why {name} is not ready failed", name=name)
    return cause or f"{name} is not ready (no cause reported)"


def _route_source_cause(route_table):
    """@return: the route source's C{unready_reason()} (if it has one), or L{None}."""
    reason = getattr(route_table, "unready_reason", None)
    if reason is None:
        return None
    try:
        return reason()
    except Exception:
        log.failure("asking the route source why it is not ready failed")
        return None


_BACKEND_KEYS = ("answered", "last_answer_age", "last_error", "last_error_age", "up", "auth")


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


def _last_good_ages(last_good_ages):
    """@return: C{last_good_ages()}, or L{None} when not given or it failed."""
    if last_good_ages is None:
        return None
    try:
        return last_good_ages()
    except Exception:
        log.failure("reading the ages of the last good answers failed")
        return None


def _leader(leaders, meta_addrs):
    try:
        return leaders(meta_addrs)
    except Exception:
        log.failure("finding the leader of {meta_addrs} failed", meta_addrs=meta_addrs)
        return None
