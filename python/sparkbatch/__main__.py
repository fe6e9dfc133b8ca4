"""``python -m sparkbatch`` runs the command line."""

import sys

from sparkbatch.cli import main

sys.exit(main())
