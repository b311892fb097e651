"""`url_filter`: drop documents whose URL is on a block-list of domains, URLs or banned words.

Adult, spam and malware sites are cheapest to remove by address, before any text is read (as in FineWeb).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, FilePath, model_validator

from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register

HOST = r"^(?:[a-z][a-z0-9+.\-]*://)?(?:[^@/?#]*@)?(?P<host>[^:/?#]+)"
WORD_SEPARATORS = r"[^\pL\pN]+"


class UrlFilterConfig(StageConfig):
    domains_file: FilePath | None = Field(
        None, description="Blocked domains, one per line ('#' comments); their subdomains are blocked too."
    )
    urls_file: FilePath | None = Field(
        None,
        description="Blocked URLs, one per line; compared lowercased, without scheme, 'www.', fragment and final '/'.",
    )
    banned_words_file: FilePath | None = Field(
        None,
        description="Words that block a URL when one of them is a token of it (the URL split on non-alphanumerics).",
    )
    soft_banned_words_file: FilePath | None = Field(
        None,
        description="Words that block a URL when at least soft_banned_word_threshold different ones are tokens of it.",
    )
    soft_banned_word_threshold: int = Field(
        2, ge=1, description="Different soft banned words a URL needs to be blocked."
    )

    @model_validator(mode="after")
    def some_list_given(self) -> UrlFilterConfig:
        if not (self.domains_file or self.urls_file or self.banned_words_file or self.soft_banned_words_file):
            raise ValueError("give at least one of domains_file, urls_file, banned_words_file, soft_banned_words_file")
        return self


def read_entries(path: Path | None) -> list[str]:
    """Non-empty lines, lowercased, without '#' comments; none for no file."""
    if path is None:
        return []
    entries = (line.split("#", 1)[0].strip().lower() for line in path.read_text(encoding="utf-8").splitlines())
    return [entry for entry in entries if entry]


def read_words(path: Path | None) -> list[str]:
    words = read_entries(path)
    for word in words:
        if not word.isalnum():
            raise ValueError(f"{path}: {word!r} is not one word, so it can never equal a URL token")
    return words


def url_keys(urls: pa.Array) -> pa.Array:
    """The form in which URLs are compared: lowercase, no scheme, 'www.', fragment or trailing slashes."""
    keys = pc.utf8_lower(urls)
    for pattern in (r"^[a-z][a-z0-9+.\-]*://", r"^www\.", "#.*$", "/+$"):
        keys = pc.replace_substring_regex(keys, pattern, "")
    return keys


def hosts(urls: pa.Array) -> pa.Array:
    host = pc.struct_field(pc.extract_regex(pc.utf8_lower(urls), HOST), "host")
    return pc.replace_substring_regex(host, r"\.$", "")


@register
class UrlFilter(MapStage):
    """Reject documents whose URL's host is (under) a blocked domain, is a blocked URL, or holds banned words."""

    name = "url_filter"
    Config = UrlFilterConfig

    def setup(self) -> None:
        config = self.config
        entries = [entry.removeprefix("*.") for entry in read_entries(config.domains_file)]
        self.domains = pc.drop_null(hosts(pa.array(entries, pa.string())))
        self.domain_depth = max((domain.count(".") + 1 for domain in self.domains.to_pylist()), default=0)
        self.urls = url_keys(pa.array(read_entries(config.urls_file), pa.string()))
        self.banned_words = pa.array(read_words(config.banned_words_file), pa.string())
        self.soft_banned_words = pa.array(read_words(config.soft_banned_words_file), pa.string())

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        urls = batch.column("url")
        tokens = pc.split_pattern_regex(pc.utf8_lower(urls), WORD_SEPARATORS)
        reasons = pa.nulls(batch.num_rows, pa.string())
        details = pa.nulls(batch.num_rows, pa.string())
        for reason, matched in (
            ("url_filter:domain", self._blocked_domain(urls)),
            ("url_filter:url", self._blocked_url(urls)),
            ("url_filter:banned_word", self._banned_word(tokens)),
            ("url_filter:soft_banned_words", self._soft_banned_words(tokens)),
        ):
            # Each row keeps the first rule that rejects it, with the entry that matched.
            first = pc.and_(pc.is_valid(matched), pc.is_null(reasons))
            reasons = pc.if_else(first, reason, reasons)
            details = pc.if_else(first, matched, details)
        return BatchResult.split(batch, reasons, details)

    def _blocked_domain(self, urls: pa.Array) -> pa.Array:
        """The blocked domain each URL's host is or lies under, the most specific one (null: none)."""
        host = hosts(urls)
        matched = pa.nulls(len(urls), pa.string())
        for labels in range(self.domain_depth, 0, -1):
            last_labels = rf"(?P<suffix>[^.]+(?:\.[^.]+){{{labels - 1}}})$"
            suffix = pc.struct_field(pc.extract_regex(host, last_labels), "suffix")
            hit = pc.and_(pc.is_in(suffix, value_set=self.domains), pc.is_null(matched))
            matched = pc.if_else(hit, suffix, matched)
        return matched

    def _blocked_url(self, urls: pa.Array) -> pa.Array:
        if not len(self.urls):
            return pa.nulls(len(urls), pa.string())
        keys = url_keys(urls)
        return pc.if_else(pc.is_in(keys, value_set=self.urls), keys, pa.scalar(None, pa.string()))

    def _banned_word(self, tokens: pa.ListArray) -> pa.Array:
        """The first banned word among each URL's tokens (null: none)."""
        if not len(self.banned_words):
            return pa.nulls(len(tokens), pa.string())
        words, rows = pc.list_flatten(tokens), pc.list_parent_indices(tokens).to_numpy()
        hits = np.flatnonzero(pc.is_in(words, value_set=self.banned_words).to_numpy(zero_copy_only=False))
        hit_rows, first_hits = np.unique(rows[hits], return_index=True)
        matched = np.full(len(tokens), None, dtype=object)
        matched[hit_rows] = pc.take(words, hits[first_hits]).to_numpy(zero_copy_only=False)
        return pa.array(matched, pa.string())

    def _soft_banned_words(self, tokens: pa.ListArray) -> pa.Array:
        """Each URL's different soft banned words, comma-joined, where there are enough (null: too few)."""
        if not len(self.soft_banned_words):
            return pa.nulls(len(tokens), pa.string())
        words, rows = pc.list_flatten(tokens), pc.list_parent_indices(tokens).to_numpy()
        hits = pc.is_in(words, value_set=self.soft_banned_words).to_numpy(zero_copy_only=False)
        found: dict[int, set[str]] = {}
        for row, word in zip(rows[hits].tolist(), pc.filter(words, hits).to_pylist()):
            found.setdefault(row, set()).add(word)
        matched = np.full(len(tokens), None, dtype=object)
        for row, soft_words in found.items():
            if len(soft_words) >= self.config.soft_banned_word_threshold:
                matched[row] = ",".join(sorted(soft_words))
        return pa.array(matched, pa.string())
