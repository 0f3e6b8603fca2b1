"""
Tests for L{metaproxy.admin}.
"""

import json

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from metaproxy.admin import build_admin_root


class _Routes:
    def __init__(self):
        self.ready = True

    def is_ready(self):
        return self.ready

    def describe(self):
        return [
            {"table": "temp", "cluster_name": "c1", "meta_addrs": ["10.0.0.1:34601", "10.0.0.2:34601"],
             "state": "ok", "age": 1.0, "stale": False, "error": None},
        ]


def _get(root, path):
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    resource = getChildForRequest(root, request)
    body = resource.render(request)
    return request.responseCode or 200, body, request


class AdminTests(SynchronousTestCase):
    def setUp(self):
        self.routes = _Routes()
        self.is_ready = True
        self.root = build_admin_root(
            self.routes, lambda: self.is_ready, leaders=lambda addrs: "10.0.0.2:34601" if "10.0.0.1" in addrs else None
        )

    def test_healthz(self):
        """/healthz answers 200 ok."""
        code, body, _ = _get(self.root, b"/healthz")
        self.assertEqual((code, body), (200, b"ok\n"))

    def test_readyz_ready(self):
        """/readyz answers 200 when ready."""
        code, body, _ = _get(self.root, b"/readyz")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body), {"ready": True, "route_source_ready": True})

    def test_readyz_not_ready(self):
        """/readyz answers 503 and says why when not ready."""
        self.is_ready = False
        self.routes.ready = False
        code, body, _ = _get(self.root, b"/readyz")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["route_source_ready"], False)

    def test_routes_with_leader(self):
        """/routes lists cached tables with cluster, metas and the believed leader."""
        code, body, request = _get(self.root, b"/routes")
        self.assertEqual(code, 200)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])
        doc = json.loads(body)
        self.assertEqual(doc["count"], 1)
        entry = doc["routes"][0]
        self.assertEqual((entry["table"], entry["cluster_name"], entry["leader"]), ("temp", "c1", "10.0.0.2:34601"))

    def test_root_lists_endpoints(self):
        """The root lists what is served, including resources mounted later."""
        self.root.putChild(b"metrics", build_admin_root(self.routes, lambda: True))
        code, body, _ = _get(self.root, b"/")
        self.assertIn("/metrics", json.loads(body)["endpoints"])
        self.assertIn("/routes", json.loads(body)["endpoints"])
