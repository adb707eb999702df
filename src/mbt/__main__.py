"""`python -m mbt ...`: the same command line as `mbt ...`."""

import sys

from mbt.cli import main

sys.exit(main())
