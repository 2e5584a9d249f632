"""``python -m cenote serve ...``."""

import sys

from cenote.cli import main

sys.exit(main())
