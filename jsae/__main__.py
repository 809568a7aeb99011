"""`python -m jsae ...` runs the `jsae` command."""

import sys

from jsae.cli import main

if __name__ == "__main__":
    sys.exit(main())
