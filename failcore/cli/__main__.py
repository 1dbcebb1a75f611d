"""`python -m failcore.cli …` runs the `failcore` command."""

import sys

from failcore.cli.main import main

sys.exit(main())
