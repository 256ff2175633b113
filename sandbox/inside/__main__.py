"""``python3 -m sandbox.inside init|hook EVENT|export …`` (see the package docstring)."""

import sys

from sandbox.inside import main

raise SystemExit(main(sys.argv[1:]))
