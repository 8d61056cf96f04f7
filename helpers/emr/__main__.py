"""``python -m helpers.emr ...``: the command line of :mod:`helpers.emr.cli`."""

from helpers.emr.cli import main

raise SystemExit(main())
