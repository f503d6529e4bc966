"""`python -m dsearch`: the same as the `dsearch` command."""

import sys

from .cli import main

sys.exit(main())
