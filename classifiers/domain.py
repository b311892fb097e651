"""Seed rules for multi-class domain labels (web, code, math, reference, forum) used to plan data mixtures.

Rules (URL patterns and keywords in YAML) label a first corpus cheaply; a fastText model trained on those
labels then recognises domains from the text alone, beyond the rules' literal matches.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gristmill.pipeline.engine.config_files import validated_yaml


class LabelRule(BaseModel):
    """How a document earns one label: its URL matches a pattern, or its text holds enough keywords."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url_patterns: list[str] = Field(default_factory=list, description="RE2 regular expressions searched in the URL, case-insensitively.")
    keywords: list[str] = Field(default_factory=list, description="Literal strings counted in the text, case-insensitively.")
    min_keyword_hits: int = Field(3, ge=1, description="Keyword occurrences (all keywords together) needed for the label.")

    @field_validator("url_patterns")
    @classmethod
    def patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                pc.match_substring_regex(pa.array([""]), pattern)
            except pa.ArrowInvalid as error:
                raise ValueError(f"URL pattern {pattern!r} is not a valid RE2 expression: {error}") from None
        return patterns


class DomainRules(BaseModel):
    """What the text says decides first (most keyword hits, at least the label's minimum), then the URL
    (earliest label whose pattern matches), then the default label."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    default_label: str = Field("web", description="Label of documents no rule claims.")
    labels: dict[str, LabelRule] = Field(min_length=1, description="Label name -> its rule.")

    @model_validator(mode="after")
    def default_is_not_a_rule(self) -> DomainRules:
        if self.default_label in self.labels:
            raise ValueError(f"default_label {self.default_label!r} must not also have a rule")
        return self

    @property
    def label_names(self) -> list[str]:
        return [*self.labels, self.default_label]


def load_rules(path: str | Path) -> DomainRules:
    """Read a rules YAML file safely; errors name the file and the field."""
    return validated_yaml(path, DomainRules, ValueError)


def seed_labels(texts: pa.Array | pa.ChunkedArray, urls: pa.Array | pa.ChunkedArray | None, rules: DomainRules) -> pa.Array:
    """One label per document from the rules, vectorised per label with Arrow's RE2 kernels."""
    count = len(texts)
    texts = pc.fill_null(texts, "")
    urls = pc.fill_null(urls, "") if urls is not None else pa.array([""] * count)
    best_label = pa.nulls(count, pa.string())
    best_hits = pa.array([0] * count, pa.int32())
    for label, rule in rules.labels.items():
        if not rule.keywords:
            continue
        pattern = "|".join(re.escape(keyword) for keyword in rule.keywords)
        hits = pc.count_substring_regex(texts, pattern, ignore_case=True)
        better = pc.and_(pc.greater_equal(hits, rule.min_keyword_hits), pc.greater(hits, best_hits))
        best_label = pc.if_else(better, label, best_label)
        best_hits = pc.if_else(better, hits, best_hits)

    by_url = pa.nulls(count, pa.string())
    for label, rule in rules.labels.items():
        if rule.url_patterns:
            matches = pc.match_substring_regex(urls, "|".join(f"(?:{p})" for p in rule.url_patterns), ignore_case=True)
            by_url = pc.if_else(pc.and_(matches, pc.is_null(by_url)), label, by_url)
    return pc.fill_null(pc.coalesce(best_label, by_url), rules.default_label)
