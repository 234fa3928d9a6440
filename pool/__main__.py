"""``python -m pool``: the same as the ``pool`` command."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
