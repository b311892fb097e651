"""Splitting texts into whitespace-separated words with Arrow, safely.

Arrow's `utf8_split_whitespace` (pyarrow 26) decodes one character past a text that ends in whitespace;
when the bytes after it in memory are not UTF-8 it keeps that whitespace on the last word ("x² " instead
of "x²"), so a result depended on leftover memory. Trimming trailing whitespace first (Arrow's trim uses
the same definition of whitespace) means no text sends the split past its end. Every stage splits here.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def whitespace_words(texts: pa.Array | pa.ChunkedArray) -> pa.ListArray | pa.ChunkedArray:
    """Each text's runs of non-whitespace, as Arrow lists."""
    return pc.utf8_split_whitespace(pc.utf8_rtrim_whitespace(texts))
