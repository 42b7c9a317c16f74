"""``python -m medmae`` runs the command line."""

import sys

from medmae.cli import main

sys.exit(main())
