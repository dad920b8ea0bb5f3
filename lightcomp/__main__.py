"""``python -m lightcomp``: the same command as ``lightcomp``."""

import sys

from lightcomp.cli import main

sys.exit(main())
