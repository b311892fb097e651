"""Gristmill stages: one module per stage, each registered by name with the stage registry.

Importing this package registers every built-in stage.
"""

from stages import (  # noqa: F401,E402  (registration side effects)
    c4_filter,
    decompose,
    decontaminate,
    domain_label,
    exact_dedup,
    fineweb_filter,
    gopher_quality,
    gopher_repetition,
    ingest,
    langid,
    length_filter,
    near_dedup,
    pii,
    quality_filter,
    quality_score,
    read_text,
    rewrite,
    tokenize,
    url_filter,
)
