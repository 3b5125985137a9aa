"""Entry point: `python -m captioning --help`."""

import sys

from captioning.cli import main

sys.exit(main())
