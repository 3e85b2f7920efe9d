"""Entry point for ``python -m harness.agent`` and for the zipapp bundle."""

import sys

from .main import main

sys.exit(main(sys.argv[1:]))
