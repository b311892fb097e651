"""Gristmill stages: one module per stage, each registered by name with the stage registry.

Importing this package registers every built-in stage.
"""

from stages import length_filter, read_text  # noqa: F401,E402  (registration side effects)
