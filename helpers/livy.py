"""``python -m helpers.livy``: the command of :mod:`helpers.dev.livy`."""

import sys

from helpers.dev.livy import main

if __name__ == "__main__":
    sys.exit(main())
