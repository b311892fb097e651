"""`c4_filter`: C4's line and page rules (Raffel et al. 2020) exactly as datatrove's C4QualityFilter applies them.

Keeps only prose lines of a page and rejects pages with lorem ipsum, code braces or too few sentences.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register
from gristmill.stages.filters import text_stats
from gristmill.stages.filters.text_stats import TERMINAL_PUNCTUATION, Verdicts, char_class, to_numpy

_CITATION = r"\[\p{Nd}*\]|\[edit\]|\[citation needed\]"
_ENDS_PROSE = r"""[.?!"']$"""
# Languages without spaces may also end a line with their own sentence marks ("。", "！").
_TERMINAL = "".join(TERMINAL_PUNCTUATION)
_ENDS_PROSE_UNSPACED = char_class(_TERMINAL + "\"'") + "$"
_SENTENCE_BREAK = char_class(_TERMINAL) + "+" + char_class(_TERMINAL, negated=True)
_POLICY = r"(?i)terms of use|privacy policy|cookie policy|uses cookies|use of cookies|use cookies"
# Why a line is removed, in the order datatrove tests it (the page rules sit between them).
LINE_RULES = ("too_long_word", "no_terminal_punct", "too_few_words", "javascript", "policy")
REMOVED_LINES = pa.field("c4_removed_lines", pa.struct([pa.field(rule, pa.int32()) for rule in LINE_RULES]))
_KEPT = -1
_PAGE_RULES = {len(LINE_RULES): ("lorem_ipsum", "'lorem ipsum'"), len(LINE_RULES) + 1: ("curly_bracket", "'{'")}
_LOREM_IPSUM, _CURLY_BRACKET = _PAGE_RULES


class C4FilterConfig(StageConfig):
    remove_citations: bool = Field(True, description="Remove Wikipedia-style citations such as [1] and [edit].")
    filter_no_terminal_punct: bool = Field(
        True, description="Remove lines not ending in . ? ! \" or ' (or ending in '...')."
    )
    min_words_per_line: int | None = Field(3, ge=0, description="Remove lines with fewer whitespace-separated words.")
    max_word_length: int | None = Field(1000, ge=1, description="Remove lines holding a longer word.")
    filter_lorem_ipsum: bool = Field(True, description="Reject pages with a kept line containing 'lorem ipsum'.")
    filter_javascript: bool = Field(True, description="Remove lines mentioning 'javascript'.")
    filter_curly_bracket: bool = Field(True, description="Reject pages with a kept line containing '{'.")
    filter_policy: bool = Field(True, description="Remove lines about terms of use, privacy or cookie policies.")
    min_num_sentences: int | None = Field(5, ge=0, description="Reject pages with fewer sentences in kept lines.")
    default_language: str = Field("en", description="Language assumed for rows whose `lang` is null.")


@register
class C4Filter(MapStage):
    """Remove non-prose lines, then reject pages that fail a page rule; kept pages get `c4_removed_lines`."""

    name = "c4_filter"
    Config = C4FilterConfig

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return input_schema.append(REMOVED_LINES)

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        text = batch.column("text")
        lines = text_stats.split_lines(text)
        spaced = text_stats.is_spaced(text_stats.language_codes(batch, self.config.default_language))[lines.rows]
        outcome = self._line_outcomes(lines.values, spaced)
        verdicts = Verdicts("c4", batch.num_rows)
        self._reject_for_page_rules(verdicts, lines, outcome)
        kept = outcome == _KEPT
        kept_lines = self._cleaned(lines.values).filter(pa.array(kept))
        if self.config.min_num_sentences is not None:
            per_line = text_stats.count_sentences(kept_lines)
            # Without spaces to split sentence marks off (zh, ja), count the runs of marks instead.
            unspaced = ~spaced[kept]
            if unspaced.any():
                marks = pc.count_substring_regex(kept_lines.filter(pa.array(unspaced)), _SENTENCE_BREAK)
                per_line[unspaced] = to_numpy(marks) + 1
            sentences = np.bincount(lines.rows[kept], weights=per_line, minlength=batch.num_rows)
            verdicts.check("min_num_sentences", "sentences", sentences, "<", self.config.min_num_sentences)

        offsets = np.r_[0, np.cumsum(np.bincount(lines.rows[kept], minlength=batch.num_rows))]
        pages = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), kept_lines)
        new_text = pc.utf8_trim_whitespace(pc.binary_join(pages, pa.scalar("\n", kept_lines.type))).cast(text.type)
        removed = pa.StructArray.from_arrays(
            [pa.array(np.bincount(lines.rows[outcome == code], minlength=batch.num_rows), pa.int32())
             for code in range(len(LINE_RULES))],
            fields=list(REMOVED_LINES.type),
        )
        columns = [new_text if name == "text" else batch.column(name) for name in batch.schema.names]
        annotated = pa.RecordBatch.from_arrays([*columns, removed], schema=self.output_schema(batch.schema))
        return BatchResult.split(annotated, *verdicts.reasons())

    def _cleaned(self, lines: pa.Array) -> pa.Array:
        """Each line stripped, then without citations (in that order, as datatrove does)."""
        stripped = pc.utf8_trim_whitespace(lines)
        return pc.replace_substring_regex(stripped, _CITATION, "") if self.config.remove_citations else stripped

    def _line_outcomes(self, lines: pa.Array, spaced: np.ndarray) -> np.ndarray:
        """Per line: -1 if kept, else the index of the line rule removing it or the code of the page rule it fires."""
        config = self.config
        outcome = np.full(len(lines), _KEPT, dtype=np.int64)

        def decide(rule: str | int, failing: pa.Array | np.ndarray) -> None:
            code = LINE_RULES.index(rule) if isinstance(rule, str) else rule
            failing = to_numpy(failing) if isinstance(failing, pa.Array) else failing
            outcome[failing & (outcome == _KEPT)] = code

        stripped = pc.utf8_trim_whitespace(lines)
        words = pc.utf8_split_whitespace(stripped)
        cleaned = self._cleaned(lines)
        if config.max_word_length is not None:
            decide("too_long_word", _holds_longer_word(stripped, words, config.max_word_length) & spaced)
        if config.filter_no_terminal_punct:
            ends_prose = np.where(spaced, to_numpy(pc.match_substring_regex(cleaned, _ENDS_PROSE)),
                                  to_numpy(pc.match_substring_regex(cleaned, _ENDS_PROSE_UNSPACED)))
            decide("no_terminal_punct", ~ends_prose | to_numpy(pc.ends_with(cleaned, "...")))
        if config.min_words_per_line is not None:
            too_few = to_numpy(pc.less(pc.list_value_length(words), config.min_words_per_line))
            decide("too_few_words", too_few & spaced)
        if config.filter_lorem_ipsum:
            decide(_LOREM_IPSUM, pc.match_substring(cleaned, "lorem ipsum", ignore_case=True))
        if config.filter_javascript:
            decide("javascript", pc.match_substring(cleaned, "javascript", ignore_case=True))
        if config.filter_curly_bracket:
            decide(_CURLY_BRACKET, pc.match_substring(cleaned, "{"))
        if config.filter_policy:
            decide("policy", pc.match_substring_regex(cleaned, _POLICY))
        return outcome

    @staticmethod
    def _reject_for_page_rules(verdicts: Verdicts, lines: text_stats.Pieces, outcome: np.ndarray) -> None:
        """A page rule fires on the first line that reaches it: the page is rejected for that line's rule."""
        firing = np.flatnonzero(outcome >= len(LINE_RULES))
        if not firing.size:
            return
        first = firing[np.r_[True, np.diff(lines.rows[firing]) > 0]]
        rows = lines.rows[first]
        line_numbers = first - (np.cumsum(lines.count()) - lines.count())[rows] + 1
        for code, (rule, found) in _PAGE_RULES.items():
            chosen = outcome[first] == code
            verdicts.reject(rule, rows[chosen], [f"line {number} has {found}" for number in line_numbers[chosen]])


def _holds_longer_word(lines: pa.Array, words: pa.ListArray, limit: int) -> np.ndarray:
    """Whether each line has a word longer than `limit` characters; only lines longer than that can."""
    found = np.zeros(len(lines), dtype=bool)
    long_lines = to_numpy(pc.greater(pc.utf8_length(lines), limit))
    if long_lines.any():
        candidates = words.filter(pa.array(long_lines))
        too_long = to_numpy(pc.greater(pc.utf8_length(pc.list_flatten(candidates)), limit))
        found[np.flatnonzero(long_lines)[pc.list_parent_indices(candidates).to_numpy()[too_long]]] = True
    return found
