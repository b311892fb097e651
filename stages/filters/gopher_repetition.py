"""`gopher_repetition`: Gopher's repetition rules (Rae et al. 2021, table A1) exactly as datatrove applies them.

Rejects documents made of repeated lines, paragraphs or word n-grams, which are mostly boilerplate or spam.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register
from gristmill.stages.filters import text_stats
from gristmill.stages.filters.text_stats import Verdicts, ratio, to_numpy


class GopherRepetitionConfig(StageConfig):
    dup_para_frac: float | None = Field(0.3, ge=0, le=1, description="Reject above this share of repeated paragraphs.")
    dup_para_char_frac: float | None = Field(
        0.2, ge=0, le=1, description="Reject above this share of characters in repeated paragraphs."
    )
    dup_line_frac: float | None = Field(0.3, ge=0, le=1, description="Reject above this share of repeated lines.")
    dup_line_char_frac: float | None = Field(
        0.2, ge=0, le=1, description="Reject above this share of characters in repeated lines."
    )
    top_2_gram_char_frac: float | None = Field(
        0.2, ge=0, le=1, description="Reject when the most frequent word 2-gram covers more of the characters."
    )
    top_3_gram_char_frac: float | None = Field(0.18, ge=0, le=1, description="The same for word 3-grams.")
    top_4_gram_char_frac: float | None = Field(0.16, ge=0, le=1, description="The same for word 4-grams.")
    dup_5_gram_char_frac: float | None = Field(
        0.15, ge=0, le=1, description="Reject when repeated word 5-grams cover more of the characters."
    )
    dup_6_gram_char_frac: float | None = Field(0.14, ge=0, le=1, description="The same for word 6-grams.")
    dup_7_gram_char_frac: float | None = Field(0.13, ge=0, le=1, description="The same for word 7-grams.")
    dup_8_gram_char_frac: float | None = Field(0.12, ge=0, le=1, description="The same for word 8-grams.")
    dup_9_gram_char_frac: float | None = Field(0.11, ge=0, le=1, description="The same for word 9-grams.")
    dup_10_gram_char_frac: float | None = Field(0.10, ge=0, le=1, description="The same for word 10-grams.")
    default_language: str = Field("en", description="Language assumed for rows whose `lang` is null.")


@register
class GopherRepetition(MapStage):
    """Apply Gopher's repetition rules in datatrove's order; a document is rejected for the first rule it fails."""

    name = "gopher_repetition"
    Config = GopherRepetitionConfig

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        config = self.config
        text = pc.fill_null(batch.column("text"), "")
        characters = to_numpy(pc.utf8_length(text))
        verdicts = Verdicts("gopher_repetition", batch.num_rows)
        empty = np.flatnonzero(characters == 0)
        verdicts.reject("empty", empty, ["empty text"] * len(empty))
        for unit, pieces in (
            ("para", text_stats.split_on(pc.utf8_trim_whitespace(text), r"\n{2,}")),
            ("line", text_stats.split_on(text, r"\n+")),
        ):
            repeated = text_stats.repeated(pieces)
            rule = f"dup_{unit}_frac"
            verdicts.check(rule, rule, ratio(pieces.count(repeated), pieces.count()), ">", getattr(config, rule))
            rule = f"dup_{unit}_char_frac"
            share = ratio(pieces.total(pieces.lengths * repeated), characters)
            verdicts.check(rule, rule, share, ">", getattr(config, rule))

        # Only documents still undecided need words; languages without spaces (zh, ja, th...) have none.
        spaced = text_stats.is_spaced(text_stats.language_codes(batch, config.default_language))
        words = text_stats.split_words(pc.if_else(pa.array(spaced & verdicts.undecided), text, ""))
        limits = {n: getattr(config, f"{'top' if n < 5 else 'dup'}_{n}_gram_char_frac") for n in range(2, 11)}
        # Ascending n checks every top n-gram rule (2-4) before the repeated n-gram ones (5-10), as datatrove does.
        for ngrams in text_stats.iter_ngrams(words, [n for n, limit in limits.items() if limit is not None]):
            n = ngrams.n
            if n < 5:
                rule, measured = f"top_{n}_gram_char_frac", text_stats.top_ngram_characters(ngrams, words)
            else:
                # The costly scan, so only for documents no rule has rejected yet.
                rule = f"dup_{n}_gram_char_frac"
                measured = text_stats.duplicated_ngram_characters(ngrams, words, verdicts.undecided & spaced)
            share = ratio(measured, characters)
            verdicts.check(rule, rule, share, ">", limits[n])
        return BatchResult.split(batch, *verdicts.reasons())
