"""`python -m nst.report <sweep dir>`: see nst.report."""

import sys

from nst.report import main

sys.exit(main())
