"""The held-out split of classifier training: by a group key (URL, id or a chosen column), so related documents stay together.

A page and its paired negative (a shuffled or rewritten copy) share a URL but not a text; split by text, they would
land on opposite sides and the held-out metrics would flatter the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

HOLDOUT_SEED, VALIDATION_SEED = 0, 1
# Tried in order when no group column is chosen: the first with any value is the key.
AUTOMATIC_GROUP_COLUMNS = ("url", "id")
TEXT_HASH = "text hash"


@dataclass(frozen=True)
class HoldoutGroups:
    """Each document's split key and where it came from, recorded in the model card and the evaluation."""

    keys: pa.Array
    column: str
    text_fallbacks: int

    def describe(self) -> dict[str, object]:
        return {"group": self.column, "documents_split_by_text_hash": self.text_fallbacks}


def key_columns(table: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    """The candidate group columns of one input as strings, so inputs typing an id differently still combine."""
    try:
        return pa.table({name: table.column(name).cast(pa.string()) for name in columns})
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ValueError(f"holdout group columns {list(columns)}: cannot use as keys: {error}") from None


def holdout_groups(texts: pa.Array, candidates: pa.Table, column: str | None = None) -> HoldoutGroups:
    """Split keys from `column`, or else the first of url and id that any document has; a document without
    a value there is keyed by its text. With neither, every document is keyed by its text."""
    if column is not None:
        if column not in candidates.column_names or candidates.column(column).null_count == len(candidates):
            raise ValueError(f"--holdout-group {column}: no document has a value in column {column!r}")
        chosen = column
    else:
        chosen = next((name for name in AUTOMATIC_GROUP_COLUMNS if name in candidates.column_names
                       and candidates.column(name).null_count < len(candidates)), None)
    texts = texts.cast(pa.string())
    if chosen is None:
        return HoldoutGroups(texts, TEXT_HASH, len(texts))
    values = candidates.column(chosen).combine_chunks().cast(pa.string())
    return HoldoutGroups(pc.coalesce(values, texts), chosen, values.null_count)


def holdout_mask(keys: pa.Array, fraction: float, seed: int = HOLDOUT_SEED) -> np.ndarray:
    """Deterministic split by a hash of each key, so documents sharing a key never straddle train and test."""
    cut = int(fraction * 2**32)
    return np.fromiter((xxhash.xxh32_intdigest(key.encode(), seed=seed) < cut for key in keys.to_pylist()), bool,
                       len(keys))
