"""Gristmill stages: one module per stage, each registered by name with the stage registry.

Importing this package registers every built-in stage.
"""

from stages import decompose, decontaminate, exact_dedup, langid, length_filter, near_dedup, pii, read_text, tokenize, url_filter  # noqa: F401,E402  (registration side effects)
