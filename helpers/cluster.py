"""``python -m helpers.cluster``: the command of :mod:`helpers.dev.cluster`."""

import sys

from helpers.dev.cluster import main

if __name__ == "__main__":
    sys.exit(main())
