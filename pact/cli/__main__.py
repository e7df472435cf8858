"""``python -m pact.cli``: the ``pact`` command."""

import sys

from pact.cli import main

sys.exit(main())
