"""`fineweb_filter`: FineWeb's line-based quality rules (Penedo et al. 2024) exactly as datatrove applies them.

Catches menus, listings and boilerplate that Gopher and C4 let through: unpunctuated, short or repeated lines.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register
from gristmill.stages.filters import text_stats
from gristmill.stages.filters.text_stats import TERMINAL_PUNCTUATION, Pieces, Verdicts, char_class, ratio, to_numpy

_ENDS_WITH_TERMINAL = char_class("".join(TERMINAL_PUNCTUATION)) + "$"


class FineWebFilterConfig(StageConfig):
    min_line_punct_ratio: float | None = Field(
        0.12, ge=0, le=1,
        description="Reject below this share of lines ending in terminal punctuation (datatrove: line_punct_thr).",
    )
    line_punct_exclude_zero: bool = Field(False, description="Keep pages where no line at all ends in punctuation.")
    max_short_line_ratio: float | None = Field(
        0.67, ge=0, le=1, description="Reject above this share of short lines (datatrove: short_line_thr)."
    )
    short_line_length: int = Field(30, ge=0, description="A line of at most this many characters is short.")
    max_char_dup_ratio: float | None = Field(
        0.01, ge=0, le=1,
        description="Reject above this share of characters in repeated lines (datatrove: char_duplicates_ratio).",
    )
    max_new_line_ratio: float | None = Field(
        0.3, ge=0, description="Reject above this many line breaks per word (datatrove: new_line_ratio)."
    )
    default_language: str = Field("en", description="Language assumed for rows whose `lang` is null.")


@register
class FineWebFilter(MapStage):
    """Apply FineWeb's rules in datatrove's order over the non-blank lines; the first failing rule rejects."""

    name = "fineweb_filter"
    Config = FineWebFilterConfig

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        config = self.config
        text = pc.fill_null(batch.column("text"), "")
        all_lines = text_stats.split_on(text, "\n")
        nonblank = to_numpy(pc.not_equal(pc.utf8_trim_whitespace(all_lines.values), ""))
        lines = Pieces(all_lines.values.filter(pa.array(nonblank)), all_lines.rows[nonblank], batch.num_rows)
        line_count = lines.count()
        verdicts = Verdicts("fineweb", batch.num_rows)
        empty = np.flatnonzero(line_count == 0)
        verdicts.reject("empty", empty, ["no non-blank line"] * len(empty))

        punctuated = ratio(lines.count(lines.matches(_ENDS_WITH_TERMINAL)), line_count)
        verdicts.check("min_line_punct_ratio", "line_punct_ratio", punctuated, "<", config.min_line_punct_ratio,
                       applies=punctuated > 0 if config.line_punct_exclude_zero else True)
        short = ratio(lines.count(lines.lengths <= config.short_line_length), line_count)
        verdicts.check("max_short_line_ratio", "short_line_ratio", short, ">", config.max_short_line_ratio)
        line_breaks = to_numpy(pc.count_substring(text, "\n"))
        repeated = lines.total(lines.lengths * text_stats.repeated(lines))
        repeated = ratio(repeated, to_numpy(pc.utf8_length(text)) - line_breaks)
        verdicts.check("max_char_dup_ratio", "char_dup_ratio", repeated, ">", config.max_char_dup_ratio)
        if config.max_new_line_ratio is not None:
            # Only documents still undecided need words; languages without spaces (zh, ja, th...) have none.
            spaced = text_stats.is_spaced(text_stats.language_codes(batch, config.default_language))
            words = text_stats.split_words(pc.if_else(pa.array(spaced & verdicts.undecided), text, ""))
            verdicts.check("max_new_line_ratio", "new_line_ratio", ratio(line_breaks, words.count()), ">",
                           config.max_new_line_ratio, spaced)
        return BatchResult.split(batch, *verdicts.reasons())
