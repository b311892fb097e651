"""Corpus metrics of a tokenizer on a sample: fertility, continued words, bytes and characters per token, vocabulary
utilisation, Shannon and Rényi efficiency, overall and per language and domain; and parity on parallel text.

Counting is vectorised per batch of documents: token ids go through `np.bincount`, and words are matched to the
tokens that overlap them with two `np.searchsorted` calls over the whole batch.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.tokenizer_eval.loading import EvalTokenizer
from gristmill.tokenizer_eval.sample import CorpusSample

RENYI_ALPHA = 2.5
BATCH_DOCUMENTS = 256
METRICS = ("fertility", "proportion_continued_words", "bytes_per_token", "chars_per_token", "vocabulary_utilisation",
           "shannon_efficiency", "renyi_efficiency")


def shannon_entropy(counts: np.ndarray) -> float:
    """H(p) = −Σ p log p in nats, p the unigram distribution of token ids given by `counts`."""
    seen = counts[counts > 0].astype(np.float64)
    if not len(seen):
        return 0.0
    probabilities = seen / seen.sum()
    return float(-(probabilities * np.log(probabilities)).sum())


def renyi_entropy(counts: np.ndarray, alpha: float = RENYI_ALPHA) -> float:
    """H_α(p) = log(Σ p^α) / (1 − α) in nats (Shannon entropy at α = 1)."""
    if alpha == 1:
        return shannon_entropy(counts)
    seen = counts[counts > 0].astype(np.float64)
    if not len(seen):
        return 0.0
    probabilities = seen / seen.sum()
    return float(np.log(np.power(probabilities, alpha).sum()) / (1 - alpha))


def efficiency(entropy: float, vocab_size: int) -> float:
    """An entropy divided by log |V|, the entropy of the uniform distribution over the full vocabulary (1 = uniform)."""
    return entropy / math.log(vocab_size) if vocab_size > 1 else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


@dataclass
class Tally:
    """Counts behind the metrics of one group of documents."""

    vocab_size: int
    documents: int = 0
    words: int = 0
    continued_words: int = 0
    tokens: int = 0
    bytes: int = 0
    characters: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def add_counts(self, counts: np.ndarray) -> None:
        if len(counts) > len(self.counts):
            self.counts = np.pad(self.counts, (0, len(counts) - len(self.counts)))
        self.counts[:len(counts)] += counts

    def merge(self, other: Tally) -> None:
        for name in ("documents", "words", "continued_words", "tokens", "bytes", "characters"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.add_counts(other.counts)

    def metrics(self) -> dict[str, Any]:
        distinct = int(np.count_nonzero(self.counts))
        return {
            "documents": self.documents, "words": self.words, "tokens": self.tokens, "bytes": self.bytes,
            "characters": self.characters, "distinct_tokens": distinct,
            "fertility": ratio(self.tokens, self.words),
            "proportion_continued_words": ratio(self.continued_words, self.words),
            "bytes_per_token": ratio(self.bytes, self.tokens),
            "chars_per_token": ratio(self.characters, self.tokens),
            "vocabulary_utilisation": ratio(distinct, self.vocab_size),
            "shannon_efficiency": efficiency(shannon_entropy(self.counts), self.vocab_size),
            "renyi_efficiency": efficiency(renyi_entropy(self.counts), self.vocab_size),
        }


@dataclass
class CorpusMeasurement:
    """One tokenizer's tallies on a sample: overall, per language and per domain, and the time it took."""

    overall: Tally
    languages: dict[str, Tally]
    domains: dict[str, Tally]
    seconds: float


def continued_words_per_document(sample_words: list[np.ndarray], texts: list[str], starts: np.ndarray,
                                 ends: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """For each document, how many of its words overlap more than one token.

    Spans are shifted by each document's offset in the batch so one pair of searchsorted calls covers the batch:
    the tokens overlapping [w0, w1) are those starting before w1 minus those ending at or before w0.
    """
    count = len(texts)
    offsets = np.zeros(count, dtype=np.int64)
    np.cumsum([len(text) for text in texts[:-1]], out=offsets[1:])
    token_offsets = np.repeat(offsets, lengths)
    token_starts = starts + token_offsets
    token_ends = ends + token_offsets
    visible = token_ends > token_starts  # a zero-width token overlaps no word
    token_starts = np.maximum.accumulate(token_starts[visible]) if visible.any() else token_starts[:0]
    token_ends = np.maximum.accumulate(token_ends[visible]) if visible.any() else token_ends[:0]
    word_counts = np.fromiter(map(len, sample_words), dtype=np.int64, count=count)
    spans = np.concatenate(sample_words) if count else np.zeros((0, 2), dtype=np.int64)
    spans = spans + np.repeat(offsets, word_counts)[:, None]
    overlapping = (np.searchsorted(token_starts, spans[:, 1], side="left")
                   - np.searchsorted(token_ends, spans[:, 0], side="right"))
    return np.bincount(np.repeat(np.arange(count), word_counts), weights=overlapping > 1,
                       minlength=count).astype(np.int64)


def measure_corpus(tokenizer: EvalTokenizer, sample: CorpusSample, max_groups: int = 12,
                   batch_documents: int = BATCH_DOCUMENTS) -> CorpusMeasurement:
    """Encode the sample in batches and tally every metric's counts per language and per domain."""
    started = time.perf_counter()
    dimensions = {"languages": sample.groups("languages", max_groups), "domains": sample.groups("domains", max_groups)}
    tallies: dict[str, dict[str, Tally]] = {name: {} for name in dimensions}
    for first in range(0, len(sample.texts), batch_documents):
        texts = sample.texts[first:first + batch_documents]
        words = sample.words[first:first + batch_documents]
        encoded = tokenizer.encode(texts)
        per_document = {
            "documents": np.ones(len(texts), dtype=np.int64),
            "words": np.fromiter(map(len, words), dtype=np.int64, count=len(texts)),
            "continued_words": continued_words_per_document(words, texts, encoded.starts, encoded.ends, encoded.lengths),
            "tokens": encoded.lengths,
            "bytes": np.array([len(text.encode()) for text in texts], dtype=np.int64),
            "characters": np.array([len(text) for text in texts], dtype=np.int64),
        }
        for dimension, groups in dimensions.items():
            batch_groups = np.array(groups[first:first + batch_documents], dtype=object)
            token_groups = np.repeat(batch_groups, encoded.lengths)
            for name in dict.fromkeys(batch_groups):
                tally = tallies[dimension].setdefault(name, Tally(tokenizer.vocab_size))
                members = batch_groups == name
                for counter, values in per_document.items():
                    setattr(tally, counter, getattr(tally, counter) + int(values[members].sum()))
                tally.add_counts(np.bincount(encoded.ids[token_groups == name]))
    overall = Tally(tokenizer.vocab_size)
    for tally in tallies["languages"].values():
        overall.merge(tally)
    return CorpusMeasurement(overall, tallies["languages"], tallies["domains"], time.perf_counter() - started)


def read_parallel(path: str | Path) -> list[dict[str, str]]:
    """Parallel text: JSON Lines, one object per aligned segment mapping language codes to its text."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict) or not all(isinstance(value, str) for value in row.values()):
                raise ValueError(f"{path}:{number}: expected an object of language code to text")
            rows.append(row)
    return rows


def measure_parity(tokenizer: EvalTokenizer, parallel: list[dict[str, str]], reference: str = "en") -> dict[str, dict[str, Any]]:
    """Per language: tokens of its segments ÷ tokens of the same segments in `reference` (1 = as cheap as reference)."""
    languages = sorted({language for row in parallel for language in row} - {reference})
    result = {}
    for language in languages:
        pairs = [(row[language], row[reference]) for row in parallel if language in row and reference in row]
        if not pairs:
            continue
        tokens = int(tokenizer.count_tokens([text for text, _ in pairs]).sum())
        reference_tokens = int(tokenizer.count_tokens([text for _, text in pairs]).sum())
        result[language] = {"segments": len(pairs), "tokens": tokens, "reference_tokens": reference_tokens,
                            "parity": ratio(tokens, reference_tokens)}
    return result
