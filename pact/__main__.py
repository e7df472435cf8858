"""``python -m pact``: the ``pact`` command (what launchers such as ``torchrun -m pact``
start)."""

import sys

from pact.cli import main

if __name__ == "__main__":
    sys.exit(main())
