"""`python -m pipeline` is the `gristmill` command."""

from pipeline.cli import main

main()
