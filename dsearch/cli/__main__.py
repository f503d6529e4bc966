"""`python -m dsearch.cli`: the same as the `dsearch` command."""

import sys

from . import main

sys.exit(main())
