"""`python -m nst`: the app, as `python -m nst.run` and the `nst` command."""

import sys

from nst.run import main

if __name__ == "__main__":
    sys.exit(main())
