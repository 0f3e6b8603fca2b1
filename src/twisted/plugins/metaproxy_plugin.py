# twistd plugin for metaproxy. There must be NO __init__.py in src/twisted/ or
# src/twisted/plugins/. Keep it import-light: twistd imports every plugin.
from twisted.application.service import ServiceMaker

metaproxy = ServiceMaker(
    "Pegasus meta proxy",
    "metaproxy.tap",
    "Apache Pegasus meta proxy: routes meta queries by table (ZooKeeper or static routes).",
    "metaproxy",
)
