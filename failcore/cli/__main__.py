"""`python -m failcore.cli …` runs the `failcore` command."""

from failcore.cli.main import entry

entry()
