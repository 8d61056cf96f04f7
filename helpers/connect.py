"""``python -m helpers.connect``: the command of :mod:`helpers.dev.connect`."""

import sys

from helpers.dev.connect import main

if __name__ == "__main__":
    sys.exit(main())
