# -*- test-case-name: metaproxy.test.test_plugin -*-
"""
Tests for the twistd plugin, C{twisted/plugins/metaproxy_plugin.py}.
"""

import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase

from metaproxy import tap


def _makers():
    return {p.tapname: p for p in getPlugins(IServiceMaker) if IPlugin.providedBy(p)}


class PluginTests(SynchronousTestCase):
    def test_plugin_discovered(self):
        """twistd finds the metaproxy service maker, whose options are metaproxy.tap's."""
        makers = _makers()
        self.assertIn("metaproxy", makers)
        self.assertIsInstance(makers["metaproxy"].options(), tap.Options)

    def test_plugin_make_service_is_taps(self):
        """The plugin builds its service with metaproxy.tap.makeService."""
        calls = []
        self.patch(tap, "makeService", lambda options: calls.append(options) or "the service")
        self.assertEqual(_makers()["metaproxy"].makeService("the options"), "the service")
        self.assertEqual(calls, ["the options"])

    def test_plugin_is_import_light(self):
        """
        Importing the plugin module (twistd imports every plugin on every run)
        loads neither metaproxy nor its dependencies.
        """
        code = (
            "import sys, twisted.plugins.metaproxy_plugin as p; "
            "heavy = [m for m in ('metaproxy', 'metaproxy.tap', 'ruamel.yaml', 'cattrs', 'kazoo', 'prometheus_client')"
            " if m in sys.modules]; print(p.metaproxy.tapname, heavy)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        self.assertEqual((out.returncode, out.stdout.strip()), (0, "metaproxy []"), out.stderr)
