"""The one text normalisation and fastText line format that classifier training and scoring share.

A classifier only recognises text prepared exactly as its training text was, so both paths call `tokenize`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Recorded in every model card; change it whenever `tokenize` changes, since old models then no longer fit.
PREPROCESSING = "gristmill-fasttext-v1"
LABEL_PREFIX = "__label__"
PUNCTUATION_RUN = r"([^\p{L}\p{N}\s]+)"
# NUL (a separator for fastText) and the non-ASCII spaces, which fastText would keep inside words.
OTHER_SPACES = r"[\x00\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"


def tokenize(texts: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> pa.ListArray:
    """Lower-case, every digit to 0, runs of punctuation as tokens of their own, split on whitespace.

    Nulls become empty token lists; NUL and Unicode spaces separate words like ASCII whitespace.
    """
    if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = pa.array(texts, pa.string())
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    text = pc.utf8_lower(pc.fill_null(texts.cast(pa.string()), ""))
    text = pc.replace_substring_regex(text, OTHER_SPACES, " ")
    text = pc.replace_substring_regex(text, r"\d", "0")
    text = pc.replace_substring_regex(text, PUNCTUATION_RUN, r" \1 ")
    split = pc.ascii_split_whitespace(pc.ascii_trim_whitespace(text))
    # An empty text splits into [""]; rebuild the lists without empty words.
    words = pc.list_flatten(split)
    kept = pc.not_equal(words, "")
    owners = pc.filter(pc.list_parent_indices(split), kept).to_numpy()
    offsets = np.zeros(len(split) + 1, np.int32)
    np.cumsum(np.bincount(owners, minlength=len(split)), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pc.filter(words, kept))


def fasttext_lines(tokens: pa.ListArray, labels: Sequence[str] | None = None) -> list[str]:
    """fastText's input format: `__label__LABEL token token ...` per document (no label when predicting)."""
    joined = pc.binary_join(tokens, " ")
    if labels is not None:
        prefixed = pc.binary_join_element_wise(LABEL_PREFIX, pa.array(labels, pa.string()), "")
        joined = pc.binary_join_element_wise(prefixed, joined, " ")
    return joined.to_pylist()
