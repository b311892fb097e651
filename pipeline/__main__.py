"""`python -m gristmill.pipeline` is the `gristmill` command."""

from gristmill.pipeline.cli.main import main

main()
