"""`gopher_quality`: Gopher's document quality rules (Rae et al. 2021, table A1) exactly as datatrove applies them.

Rejects documents that are too short or long, with odd words, symbols, bullets or too few stop words.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register
from gristmill.stages.filters import text_stats
from gristmill.stages.filters.text_stats import LINE_BREAK, SPACE, STOP_WORDS, SYMBOL_CHARACTERS, Verdicts, char_class, ratio, to_numpy

_BULLET_LINE = rf"{SPACE}*[•-]"
_ELLIPSIS_LINE_END = rf"(?:\.\.\.|…){SPACE}*(?:{LINE_BREAK}|$)"
_NOT_A_SYMBOL = char_class("".join(SYMBOL_CHARACTERS), negated=True)


class GopherQualityConfig(StageConfig):
    min_doc_words: int | None = Field(50, ge=0, description="Reject with fewer words (symbols not counted).")
    max_doc_words: int | None = Field(100_000, ge=0, description="Reject with more words (symbols not counted).")
    min_avg_word_length: float | None = Field(3, ge=0, description="Reject when the mean word length is lower.")
    max_avg_word_length: float | None = Field(10, ge=0, description="Reject when the mean word length is higher.")
    max_symbol_word_ratio: float | None = Field(
        0.1, ge=0, description="Reject with more '#', or more '...' and '…', per word (symbols counted) than this."
    )
    max_bullet_lines_ratio: float | None = Field(
        0.9, ge=0, le=1, description="Reject above this share of lines starting with '•' or '-'."
    )
    max_ellipsis_lines_ratio: float | None = Field(
        0.3, ge=0, le=1, description="Reject above this share of lines ending with '...' or '…'."
    )
    min_alpha_words_ratio: float | None = Field(
        0.8, ge=0, le=1,
        description="Reject below this share of words holding a letter (datatrove: max_non_alpha_words_ratio).",
    )
    min_stop_words: int | None = Field(
        2, ge=0, description="Reject with fewer distinct stop words of the document's language (if it has a list)."
    )
    stop_words: dict[str, list[str]] | None = Field(
        None, description="Stop words by language code, replacing the built-in lists (JSON on the command line)."
    )
    default_language: str = Field("en", description="Language assumed for rows whose `lang` is null.")

    @field_validator("stop_words", mode="before")
    @classmethod
    def stop_words_from_json(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def bounds_in_order(self) -> GopherQualityConfig:
        for low, high in (("min_doc_words", "max_doc_words"), ("min_avg_word_length", "max_avg_word_length")):
            if None not in (getattr(self, low), getattr(self, high)) and getattr(self, high) < getattr(self, low):
                raise ValueError(f"{high} must be at least {low}")
        return self


@register
class GopherQuality(MapStage):
    """Apply Gopher's quality rules in datatrove's order; a document is rejected for the first rule it fails."""

    name = "gopher_quality"
    Config = GopherQualityConfig

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        config = self.config
        text = pc.fill_null(batch.column("text"), "")
        languages = text_stats.language_codes(batch, config.default_language)
        spaced = text_stats.is_spaced(languages)
        # Languages without spaces (zh, ja, th...) get no words: the word rules skip them.
        words = text_stats.split_words(pc.if_else(pa.array(spaced), text, ""))
        all_words = words.count()  # symbols such as "," and "#" included, as datatrove counts them
        not_symbol = words.matches(_NOT_A_SYMBOL)
        counted_words = words.count(not_symbol)
        mean_length = np.divide(words.total(words.lengths * not_symbol), counted_words,
                                out=np.full(batch.num_rows, np.nan), where=counted_words > 0)
        lines = text_stats.count_lines(text)

        verdicts = Verdicts("gopher_quality", batch.num_rows)
        verdicts.check("min_doc_words", "words", counted_words, "<", config.min_doc_words, spaced)
        verdicts.check("max_doc_words", "words", counted_words, ">", config.max_doc_words, spaced)
        verdicts.check("min_avg_word_length", "avg_word_length", mean_length, "<", config.min_avg_word_length, spaced)
        verdicts.check("max_avg_word_length", "avg_word_length", mean_length, ">", config.max_avg_word_length, spaced)
        hashes = ratio(to_numpy(pc.count_substring(text, "#")), all_words)
        verdicts.check("max_hash_word_ratio", "hash_word_ratio", hashes, ">", config.max_symbol_word_ratio, spaced)
        ellipses = ratio(to_numpy(pc.add(pc.count_substring(text, "..."), pc.count_substring(text, "…"))), all_words)
        verdicts.check("max_ellipsis_word_ratio", "ellipsis_word_ratio", ellipses, ">", config.max_symbol_word_ratio,
                       spaced)
        # Arrow's regex count lets "^" match wherever a search resumes, so the first line is tested apart.
        bullet_lines = pc.add(pc.count_substring_regex(text, f"(?:{LINE_BREAK}){_BULLET_LINE}"),
                              pc.cast(pc.match_substring_regex(text, f"^{_BULLET_LINE}"), pa.int64()))
        verdicts.check("max_bullet_lines_ratio", "bullet_lines_ratio", ratio(to_numpy(bullet_lines), lines), ">",
                       config.max_bullet_lines_ratio)
        ellipsis_lines = ratio(to_numpy(pc.count_substring_regex(text, _ELLIPSIS_LINE_END)), lines)
        verdicts.check("max_ellipsis_lines_ratio", "ellipsis_lines_ratio", ellipsis_lines, ">",
                       config.max_ellipsis_lines_ratio)
        alpha = ratio(words.count(words.matches(r"\pL")), all_words)
        verdicts.check("min_alpha_words_ratio", "alpha_words_ratio", alpha, "<", config.min_alpha_words_ratio, spaced)
        if config.min_stop_words is not None:
            stop_words = STOP_WORDS | {code: frozenset(listed) for code, listed in (config.stop_words or {}).items()}
            has_list = to_numpy(pc.is_in(languages, pa.array(sorted(stop_words), pa.string())))
            found = text_stats.distinct_stop_words(words, languages, stop_words)
            verdicts.check("min_stop_words", "stop_words", found, "<", config.min_stop_words, spaced & has_list)
        return BatchResult.split(batch, *verdicts.reasons())
