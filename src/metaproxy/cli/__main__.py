"""C{python -m metaproxy.cli}: the C{metaproxy} command without the installed script."""

import sys

from metaproxy.cli import main

sys.exit(main())
