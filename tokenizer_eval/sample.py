"""The texts every tokenizer is measured on: a seeded sample of a Gristmill dataset, with each document's language and domain.

Only the `id`, `text`, `lang` and domain columns are read, and reading stops at the sample size, so memory is bounded by
the sample. All tokenizers see the same documents, so their numbers are comparable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xxhash

from pipeline.dataset import Dataset, DatasetError
from tokenizer_eval.words import word_spans

UNKNOWN = "unknown"
OTHER = "(other)"
# Salted apart from `gristmill tokenizer train`'s sample, so a trained tokenizer is not measured on exactly
# the documents it was trained on (unless the sample is most of the dataset).
SAMPLE_SALT = "tokenizer-eval"


@dataclass
class CorpusSample:
    """Sampled documents with their language and domain groups and their words (computed once for all tokenizers)."""

    texts: list[str]
    languages: list[str]
    domains: list[str]
    domain_column: str | None
    documents_read: int
    words: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.words:
            self.words = [word_spans(text) for text in self.texts]

    @property
    def bytes(self) -> int:
        return sum(len(text.encode()) for text in self.texts)

    def groups(self, column: str, max_groups: int) -> list[str]:
        """Each document's group in `column` ("languages" or "domains"): the largest `max_groups` by bytes, else OTHER."""
        values = getattr(self, column)
        sizes: Counter[str] = Counter()
        for value, text in zip(values, self.texts):
            sizes[value] += len(text)
        kept = {name for name, _ in sizes.most_common(max_groups)}
        return [value if value in kept else OTHER for value in values]


def sample_dataset(path: str | Path, max_bytes: int, seed: int = 0, domain_column: str | None = None) -> CorpusSample:
    """Documents whose seeded id hash falls under the fraction that gives `max_bytes`, in dataset order, up to max_bytes.

    The domain column is `domain_column`, else `domain`, else `source`, whichever the dataset has.
    """
    dataset = Dataset(path)
    schema = dataset.schema()
    if "text" not in schema.names:
        raise DatasetError(f"{dataset.path}: has no text column")
    if domain_column is None:
        domain_column = next((name for name in ("domain", "source") if name in schema.names), None)
    elif domain_column not in schema.names:
        raise DatasetError(f"{dataset.path}: has no column {domain_column!r}")
    columns = ["id", "text"] + [name for name in ("lang", domain_column) if name and name in schema.names]
    total = sum(record.text_bytes_out for record in dataset.manifest().shards) or 1
    threshold = min(max_bytes / total * 1.1, 1.0) * 2**64
    texts: list[str] = []
    languages: list[str] = []
    domains: list[str] = []
    size = read = 0
    for batch in dataset.iter_batches(columns=columns):
        rows = batch.to_pydict()
        missing = [None] * batch.num_rows
        for document_id, text, language, domain in zip(rows["id"], rows["text"], rows.get("lang", missing),
                                                        rows.get(domain_column, missing)):
            read += 1
            key = xxhash.xxh3_64_intdigest(f"{SAMPLE_SALT}\x1f{seed}\x1f{document_id}".encode())
            if not text or key >= threshold:
                continue
            texts.append(text)
            languages.append(language or UNKNOWN)
            domains.append(domain or UNKNOWN)
            size += len(text.encode())
            if size >= max_bytes:
                return CorpusSample(texts, languages, domains, domain_column, read)
    return CorpusSample(texts, languages, domains, domain_column, read)
