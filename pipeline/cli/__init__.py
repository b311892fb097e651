"""The `gristmill` command line: the only layer that imports every other; it parses options and calls the library."""
