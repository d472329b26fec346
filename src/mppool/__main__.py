"""``python -m mppool``: the command line (see :mod:`mppool._cli`)."""

import sys

from ._web._cli import main

if __name__ == "__main__":
    sys.exit(main())
