"""`python -m longvid.cli`: the `longvid` command."""

import sys

from . import main

sys.exit(main())
