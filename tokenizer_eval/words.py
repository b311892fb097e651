"""The word rule behind fertility: runs of letters and digits, and one word per character where scripts use no spaces.

Fertility is only comparable between tokenizers if every tokenizer is divided by the same word count,
so the rule is fixed here, documented in docs/TOKENIZER_EVAL.md, and independent of any tokenizer.
"""

from __future__ import annotations

import numpy as np
import regex

# Scripts written without spaces between words. A dictionary segmenter would be needed to find their
# words; instead each character (with the combining marks that follow it) counts as one word.
# U+30FC (katakana-hiragana prolonged sound mark) and U+3005 (ideographic iteration mark) are
# script "Common" but only ever stand inside Japanese and Chinese text.
UNSPACED_SCRIPTS = ("Han", "Hiragana", "Katakana", "Thai", "Lao", "Khmer", "Myanmar")
_UNSPACED_CLASS = "".join(rf"\p{{{script}}}" for script in UNSPACED_SCRIPTS) + r"\u30FC\u3005"
WORD_PATTERN = regex.compile(
    rf"[{_UNSPACED_CLASS}]\p{{M}}*"                      # one unit of an unspaced script
    rf"|[[\p{{L}}\p{{M}}\p{{N}}\p{{Pc}}]--[{_UNSPACED_CLASS}]]+",  # a run of letters, marks, digits, underscores
    regex.VERSION1,
)


def word_spans(text: str) -> np.ndarray:
    """Character offsets (start, end) of the words of `text`, as an int64 array of shape (words, 2)."""
    spans = [match.span() for match in WORD_PATTERN.finditer(text)]
    return np.array(spans, dtype=np.int64).reshape(-1, 2)


def words(text: str) -> list[str]:
    """The words of `text` by the same rule (for core-vocabulary lists and for tests)."""
    return WORD_PATTERN.findall(text)
