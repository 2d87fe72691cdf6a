"""`python -m controller.cli`: the `doseline` command."""

import sys

from controller.cli import main

sys.exit(main())
